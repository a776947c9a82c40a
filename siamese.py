"""The predictor: loads trained weights and scores how similar two images are."""
import matplotlib

import torch

from nets.siamese import Siamese as SiameseNet
from utils.checkpoint import load_exact
from utils.config import parse_bool
from utils.utils import preprocess, show_config


class Siamese:
    """Similarity of image pairs with trained Siamese weights.

    Class-level defaults can be overridden by keyword: Siamese(model_path="logs/best_epoch_weights.pth").
    """

    _defaults = {
        "model_path": "model_data/Omniglot_vgg.pth",
        "input_shape": [105, 105],  # the size the weights were trained at
        "letterbox_image": False,  # False: resize + centre crop (as validation); True: keep aspect, grey padding
        "cuda": torch.cuda.is_available(),
    }

    def __init__(self, verbose=True, **kwargs):
        unknown = set(kwargs) - set(self._defaults)
        if unknown:
            raise TypeError(f"unknown Siamese settings {sorted(unknown)}; valid: {sorted(self._defaults)}")
        self.__dict__.update(self._defaults)
        self.__dict__.update(kwargs)
        self.input_shape = list(self.input_shape)
        self.device = torch.device("cuda" if self.cuda and torch.cuda.is_available() else "cpu")
        self.net = load_exact(SiameseNet(self.input_shape), self.model_path).to(self.device).eval()
        if verbose:
            show_config(**{k: getattr(self, k) for k in self._defaults})

    def preprocess(self, image):
        """A PIL image, uint8 tensor or path -> (3, H, W) float tensor at this model's input size."""
        return preprocess(image, self.input_shape, self.letterbox_image)

    @torch.inference_mode()
    def embed(self, images, batch_size=64):
        """A list of PIL images, tensors or paths -> (N, flat) backbone features, in batches."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start:start + batch_size]])
            chunks.append(self.net.embed(batch.to(self.device)).float())
        return torch.cat(chunks) if chunks else torch.empty(0, 0)

    @torch.inference_mode()
    def score_pairs(self, emb1, emb2):
        """Embeddings (N, flat) and (N, flat) (or one row broadcast) -> (N,) similarity probabilities."""
        emb1, emb2 = torch.broadcast_tensors(emb1.to(self.device), emb2.to(self.device))
        return torch.sigmoid(self.net.score(emb1, emb2)).squeeze(1).cpu()

    def similarity(self, image_1, image_2):
        """Similarity probability in [0, 1] of two images (PIL, tensor or path)."""
        emb = self.embed([image_1, image_2])
        return float(self.score_pairs(emb[:1], emb[1:]))

    def detect_image(self, image_1, image_2, show=True, save_path=None):
        """Score two PIL images and draw them side by side with `Similarity: 0.xxx` above.

        The figure is shown when `show` and a display exist, and saved to `save_path` if given.
        Returns the similarity probability as a float.
        """
        probability = self.similarity(image_1, image_2)
        if show or save_path:
            draw_pair(image_1, image_2, f"Similarity: {probability:.3f}", save_path, show)
        return probability


def add_predictor_args(parser):
    """Add the predictor's settings (--model_path, --input_shape, --letterbox_image, --cuda) to an argparse parser."""
    defaults = Siamese._defaults
    parser.add_argument("--model_path", default=defaults["model_path"], help="trained Siamese weights (.pth)")
    parser.add_argument("--input_shape", type=int, nargs=2, default=defaults["input_shape"], metavar=("H", "W"),
                        help="the input size the weights were trained at")
    parser.add_argument("--letterbox_image", type=parse_bool, default=defaults["letterbox_image"], metavar="True|False",
                        help="keep aspect ratio with grey padding instead of resize + centre crop")
    parser.add_argument("--cuda", type=parse_bool, default=defaults["cuda"], metavar="True|False")


def predictor_from_args(args, verbose=True):
    """A Siamese predictor from parsed `add_predictor_args` settings."""
    return Siamese(model_path=args.model_path, input_shape=args.input_shape, letterbox_image=args.letterbox_image,
                   cuda=args.cuda, verbose=verbose)


def draw_pair(image_1, image_2, title, save_path=None, show=True):
    """Two PIL images side by side under `title`; saved and/or shown (never blocks without a display)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.4))
    for ax, image in zip(axes, (image_1, image_2)):
        ax.imshow(image)
        ax.axis("off")
    fig.suptitle(title)
    if save_path:
        fig.savefig(save_path, bbox_inches="tight")
    if show and matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        plt.show()
    plt.close(fig)
