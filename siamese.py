"""The predictor: loads trained weights and scores how similar two images are."""
import torch

from nets.siamese import SiameseNetwork, backbone_of, check_input_shape
from utils.checkpoint import load_exact, load_weights
from utils.config import parse_bool, show_config
from utils.images import preprocess
from utils.loop import embed_images


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
        check_input_shape(self.input_shape)
        self.device = torch.device("cuda" if self.cuda and torch.cuda.is_available() else "cpu")
        state = load_weights(self.model_path)
        net = SiameseNetwork(self.input_shape, backbone_of(state))  # the weights say which backbone they need
        self.net = load_exact(net, state, self.model_path).to(self.device).eval()
        if verbose:
            show_config(**{k: getattr(self, k) for k in self._defaults})

    def preprocess(self, image):
        """A PIL image, uint8 tensor or path -> (3, H, W) float tensor at this model's input size."""
        return preprocess(image, self.input_shape, self.letterbox_image)

    def embed(self, images, batch_size=64, progress=False, desc="embedding"):
        """A list of PIL images, tensors or paths -> (N, flat) float backbone features on the CPU, in batches.

        The one embedding path of prediction, evaluation and gallery search (`utils.loop.embed_images`, which
        training's per-epoch one-shot check uses too); `progress` shows a tqdm bar.
        """
        return embed_images(self.net, images, self.input_shape, self.device, self.letterbox_image, batch_size,
                            progress, desc)

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
        """Return the similarity (a float in [0, 1], 1 = same class) of two PIL images, and draw them.

        The name is the original's. The figure, the two images side by side under `Similarity: 0.xxx`,
        is shown when `show` and an interactive matplotlib backend are there, and saved to `save_path` if given.
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


def check_predictor_args(parser, args):
    """End the program with argparse's one-line error when the `add_predictor_args` settings cannot work."""
    try:
        check_input_shape(args.input_shape)
    except ValueError as e:
        parser.error(str(e))


def predictor_from_args(args, verbose=True):
    """A Siamese predictor from parsed `add_predictor_args` settings."""
    return Siamese(model_path=args.model_path, input_shape=args.input_shape, letterbox_image=args.letterbox_image,
                   cuda=args.cuda, verbose=verbose)


def draw_pair(image_1, image_2, title, save_path=None, show=True):
    """Two PIL images side by side under `title`; saved and/or shown (never blocks without a display)."""
    import matplotlib.pyplot as plt  # only here: importing the predictor must leave matplotlib's backend alone

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.4))
    for ax, image in zip(axes, (image_1, image_2)):
        ax.imshow(image)
        ax.axis("off")
    fig.suptitle(title)
    if save_path:
        fig.savefig(save_path, bbox_inches="tight")
    if show and fig.canvas.required_interactive_framework:  # None for Agg and other file-only backends
        plt.show()
    plt.close(fig)
