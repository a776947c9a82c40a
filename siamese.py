"""The predictor: loads trained weights and scores how similar two images are."""
import sys

import torch
from tqdm import tqdm

from nets.siamese import SiameseNetwork, backbone_of, check_input_shape, flat_features
from utils.configurator import parse_bool, show_config
from utils.errors import WeightsError, printable
from utils.images import preprocess
from utils.weights import load_exact, read_weights, settings_path

SCORE_CHUNK = 4096  # pairs the head scores at a time: bounds the memory of gathered embeddings
EMBED_BATCH = 64


class Siamese:
    """Similarity of image pairs with trained Siamese weights.

    Settings are keywords, each optional: Siamese(model_path="logs/best_epoch_weights.pth"). What is not given is
    taken from the settings file training wrote beside the weights (`best_epoch_weights.json`, or the config in a
    `last.ckpt`), else from `defaults`. A value given that contradicts that file raises WeightsError naming both.
    `settings` says, for each name, the value used and where it came from.
    """

    defaults = {
        "model_path": "model_data/Omniglot_vgg.pth",
        "input_shape": [105, 105],  # the size the weights were trained at
        "letterbox_image": False,  # False: resize + centre crop (as validation); True: keep aspect, grey padding
        "crop_to_ink": False,  # True: fit the square around a drawing's dark ink instead of the whole image
        "cuda": None,  # None: a GPU when there is one
        "threshold": 0.5,  # similarity from which a pair is called the same
        "tta": 0,  # embed each image also shifted this many ways (up to 8) and average: steadier, slower
    }

    def __init__(self, verbose=True, **given):
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise TypeError(f"unknown Siamese settings {sorted(unknown)}; valid: {sorted(self.defaults)}")
        self.model_path = given.get("model_path") or self.defaults["model_path"]
        state, recorded, source = read_weights(self.model_path)
        self.settings = choose_settings(given, recorded, source, self.model_path)
        self.input_shape = list(self.settings["input_shape"][0])
        self.letterbox_image, self.crop_to_ink = self.settings["letterbox_image"][0], self.settings["crop_to_ink"][0]
        self.threshold, self.tta = self.settings["threshold"][0], int(self.settings["tta"][0])
        self.device = choose_device(self.settings["cuda"][0])
        backbone = recorded.get("backbone") or backbone_of(state)
        check_input_shape(self.input_shape, backbone)
        check_feature_count(state, self.input_shape, backbone, self.model_path)
        net = SiameseNetwork(self.input_shape, backbone)
        self.net = load_exact(net, state, self.model_path).to(self.device).eval()
        if verbose:
            show_config(**{name: describe(*self.settings[name]) for name in self.defaults})

    @classmethod
    def from_network(cls, net, input_shape, device, letterbox_image=False, crop_to_ink=False):
        """A predictor around a network in memory (training's, for its per-epoch one-shot check); `net` is put in
        eval mode while the predictor is used and left so."""
        predictor = cls.__new__(cls)
        predictor.model_path, predictor.net, predictor.device = None, net.eval(), device
        predictor.input_shape, predictor.letterbox_image, predictor.threshold = list(input_shape), letterbox_image, 0.5
        predictor.tta, predictor.crop_to_ink = 0, crop_to_ink
        predictor.settings = {}
        return predictor

    def preprocess(self, image):
        """A PIL image, uint8 tensor or path -> (3, H, W) float tensor at this model's input size."""
        return preprocess(image, self.input_shape, self.letterbox_image, self.crop_to_ink)

    @torch.inference_mode()
    def embed(self, images, batch_size=EMBED_BATCH, progress=False, desc="embedding"):
        """A list of PIL images, uint8 tensors or paths -> (N, flat) float32 backbone features on the CPU.

        The one embedding path of prediction, evaluation, gallery search and training's per-epoch one-shot check:
        `preprocess`, then the backbone, `batch_size` images at a time; `progress` shows a tqdm bar.
        """
        self.net.eval()
        chunks = []
        with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, len(images), batch_size):
                batch = torch.stack([self.preprocess(image) for image in images[start:start + batch_size]])
                views = shifted_views(batch.to(self.device), self.tta)
                chunks.append(torch.stack([self.net.embed(view).float() for view in views]).mean(0).cpu())
                bar.update(len(batch))
        return torch.cat(chunks) if chunks else torch.empty(0, 0)

    @torch.inference_mode()
    def score_pairs(self, emb1, emb2, logits=False):
        """Embeddings (N, flat) and (N, flat), either of them one row broadcast against the other -> (N,) similarity
        probabilities on the CPU (the head's logits with `logits`, which rank without ties at saturation).

        The one scoring path: gallery, pair lists, one-shot tasks and verification all come here, SCORE_CHUNK pairs
        at a time.
        """
        count = max(len(emb1), len(emb2))
        scores = []
        for start in range(0, count, SCORE_CHUNK):
            rows = slice(start, start + SCORE_CHUNK)
            first = emb1 if len(emb1) == 1 else emb1[rows]
            second = emb2 if len(emb2) == 1 else emb2[rows]
            first, second = torch.broadcast_tensors(first.to(self.device), second.to(self.device))
            scores.append(self.net.score(first, second).squeeze(1).float().cpu())
        scores = torch.cat(scores) if scores else torch.empty(0)
        return scores if logits else torch.sigmoid(scores)

    def score_indexed(self, embeddings, first, second, logits=False):
        """Similarities of the pairs (embeddings[first[k]], embeddings[second[k]]) -> (P,), gathered SCORE_CHUNK pairs
        at a time so that memory stays bounded by the chunk, whatever the number of pairs."""
        first, second = torch.as_tensor(first, dtype=torch.long), torch.as_tensor(second, dtype=torch.long)
        parts = [self.score_pairs(embeddings[first[start:start + SCORE_CHUNK]],
                                  embeddings[second[start:start + SCORE_CHUNK]], logits)
                 for start in range(0, len(first), SCORE_CHUNK)]
        return torch.cat(parts) if parts else torch.empty(0)

    def index(self, embeddings):
        """An `EmbeddingIndex` of (N, flat) embeddings (a gallery) to score many queries against quickly."""
        return EmbeddingIndex(self.net, embeddings)

    def similarity(self, image_1, image_2):
        """Similarity probability in [0, 1] of two images (PIL, tensor or path)."""
        emb = self.embed([image_1, image_2])
        return float(self.score_pairs(emb[:1], emb[1:]))

    def verdict(self, similarity):
        """"same" when `similarity` reaches this predictor's threshold, else "different"."""
        return "same" if similarity >= self.threshold else "different"

    def detect_image(self, image_1, image_2, show=True, save_path=None):
        """Return the similarity (a float in [0, 1], 1 = same class) of two PIL images, and draw them.

        The name is the original's. The figure, the two images side by side under `Similarity: 0.xxx`,
        is shown when `show` and an interactive matplotlib backend are there, and saved to `save_path` if given.
        """
        probability = self.similarity(image_1, image_2)
        if show or save_path:
            from utils.figures import draw_pair

            draw_pair(image_1, image_2, f"Similarity: {probability:.3f}", save_path, show)
        return probability


class EmbeddingIndex:
    """Embeddings prepared once for scoring queries against all of them: the head's logit |q - e| @ w + b is
    sum over w_j > 0 of |w_j q_j - w_j e_j|, less the same sum over w_j < 0, plus b: two L1 distances (torch.cdist,
    one fused pass) between features scaled by |w|, instead of a difference, an absolute value and a product over
    the whole (N, flat) matrix for every query. Equal to `Siamese.score_pairs` up to float rounding."""

    @torch.inference_mode()
    def __init__(self, net, embeddings):
        w, b = net.head()
        w, self.bias = w[:, 0].float().cpu(), float(b)
        # (feature indices, their |w|) of the positive and of the negative weights, each part one contiguous matrix
        self.parts = [(index, w[index].abs()) for index in (torch.nonzero(w >= 0)[:, 0], torch.nonzero(w < 0)[:, 0])]
        self.matrices = [torch.index_select(embeddings.float(), 1, index).mul_(scale) for index, scale in self.parts]
        self.count = len(embeddings)

    def __len__(self):
        return self.count

    @torch.inference_mode()
    def scores(self, query, logits=False):
        """One (1, flat) query embedding -> (N,) similarities to every indexed embedding (logits with `logits`)."""
        distance = torch.full((self.count,), self.bias)
        for sign, (index, scale), matrix in zip((1, -1), self.parts, self.matrices):
            if len(index):
                distance += sign * torch.cdist(torch.index_select(query.float(), 1, index) * scale, matrix, p=1)[0]
        return distance if logits else torch.sigmoid(distance)


SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))


def shifted_views(batch, count):
    """A (B, 3, H, W) batch and `count` copies of it moved by a few pixels (a 32nd of the side; the border
    repeated where the picture moves in): the views whose embeddings test-time augmentation averages."""
    if not count:
        return [batch]
    step = max(1, min(batch.shape[-2:]) // 32)
    padded = torch.nn.functional.pad(batch, (step, step, step, step), mode="replicate")
    height, width = batch.shape[-2:]
    views = [batch]
    for dy, dx in SHIFTS[:count]:
        top, left = step + dy * step, step + dx * step
        views.append(padded[..., top:top + height, left:left + width])
    return views


def choose_settings(given, recorded, source, model_path):
    """{name: (value, where it came from)} for every predictor setting.

    A value in `given` (not None) wins over the one `recorded` with the weights (in the file `source`), which wins
    over the default; a given input_shape, letterbox_image or crop_to_ink that differs from the recorded one raises
    WeightsError naming both.
    """
    chosen = {}
    for name, default in Siamese.defaults.items():
        value = given.get(name)
        if name in ("input_shape", "letterbox_image", "crop_to_ink") and value is not None and name in recorded:
            if (list(value) if name == "input_shape" else value) != recorded[name]:
                raise WeightsError(f"{name} {list(value) if name == 'input_shape' else value} contradicts "
                                   f"{recorded[name]} recorded in {source} for {model_path}: leave {name} out to "
                                   f"use the recorded value")
        if value is not None:
            chosen[name] = (value, "given")
        elif name in recorded:
            chosen[name] = (recorded[name], f"from {source}")
        else:
            chosen[name] = (default, "default")
    return chosen


def describe(value, source):
    """A settings table cell: the value and where it came from, control characters escaped."""
    return printable(f"{value} ({source})")


def check_feature_count(state, input_shape, backbone, path):
    """Raise WeightsError naming `path` when the weights' head takes another feature count than `input_shape`
    gives, before any network is built at that size (a typo such as 10500 would allocate hundreds of GB)."""
    weight = state.get("fully_connect1.weight")
    expected = flat_features(input_shape, backbone)
    if weight is not None and weight.dim() == 2 and weight.shape[1] != expected:
        raise WeightsError(f"{path}: fully_connect1.weight has shape {list(weight.shape)}, expected [512, {expected}]; "
                           f"these weights take {weight.shape[1]} backbone features, input_shape {list(input_shape)} "
                           f"gives {expected}: pass the input_shape the weights were trained at")


def choose_device(cuda):
    """`cuda` None or True: the GPU when there is one (True without one says so on stderr, as training does), else the
    CPU; False: the CPU. Returns the torch.device."""
    if cuda and not torch.cuda.is_available():
        print("Note: cuda True but no GPU is available here; using the CPU", file=sys.stderr)
    return torch.device("cuda" if cuda is not False and torch.cuda.is_available() else "cpu")


def add_predictor_args(parser):
    """Add the predictor's settings (--model_path, --input_shape, --letterbox_image, --crop_to_ink, --cuda, --tta) to
    an argparse parser.

    Each defaults to None, meaning: from the weights' settings file, else `Siamese.defaults`.
    """
    defaults = Siamese.defaults
    parser.add_argument("--model_path", default=defaults["model_path"], help="trained Siamese weights (.pth)")
    parser.add_argument("--input_shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help=f"the input size the weights were trained at (default: from the weights' .json "
                             f"settings file, else {defaults['input_shape'][0]} {defaults['input_shape'][1]})")
    parser.add_argument("--letterbox_image", type=parse_bool, default=None, metavar="True|False",
                        help="keep aspect ratio with grey padding instead of resize + centre crop (default: from "
                             "the settings file, else False)")
    parser.add_argument("--crop_to_ink", type=parse_bool, default=None, metavar="True|False",
                        help="fit the square around a drawing's dark ink instead of the whole image, as weights "
                             "trained with crop_to_ink need (default: from the settings file, else False)")
    parser.add_argument("--cuda", type=parse_bool, default=None, metavar="True|False",
                        help="use the GPU (default: when there is one; True without one: the CPU, with a note)")
    parser.add_argument("--tta", type=int, default=None, choices=range(9), metavar="0-8",
                        help="also embed each image shifted this many ways and average the embeddings (default 0)")


def check_predictor_args(parser, args):
    """End the program with argparse's one-line error when the `add_predictor_args` settings cannot work."""
    if args.input_shape is None:
        return
    try:
        check_input_shape(args.input_shape)
    except ValueError as e:
        parser.error(str(e))


def predictor_from_args(args, verbose=True, **extra):
    """A Siamese predictor from parsed `add_predictor_args` settings (and `extra` ones such as threshold)."""
    return Siamese(model_path=args.model_path, input_shape=args.input_shape, letterbox_image=args.letterbox_image,
                   crop_to_ink=args.crop_to_ink,
                   cuda=args.cuda, tta=args.tta, verbose=verbose, **extra)


def assumed_size_note(predictor):
    """A one-line note when the input size is the default, not recorded with the weights nor given; else ""."""
    value, source = predictor.settings["input_shape"]
    if source != "default":
        return ""
    return (f"note: {predictor.model_path} has no settings file ({settings_path(predictor.model_path)}); "
            f"assuming input_shape {value[0]} {value[1]} (pass --input_shape to change it)")
