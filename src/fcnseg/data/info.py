"""Class names, palettes and ignore indices: the one place that defines them for every dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's labels mean: names, colours (one RGB triple per class) and the void label.

    ``task`` names what the classes label ("semantic"; SIFT Flow also labels "geometric" classes).
    ``extra_heads``: the further label sets of a dataset labelled for several tasks at once, each its
    own DatasetInfo; such a dataset's labels hold one map per head, and a net for it one head per task.
    ``exclude_absent``: classes without ground-truth pixels are left out of the mean scores (SIFT Flow's
    reference scoring, as several of its classes never occur in its test images).
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    task: str = "semantic"
    extra_heads: tuple[DatasetInfo, ...] = ()
    exclude_absent: bool = False

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours")

    @property
    def num_classes(self) -> int:
        """Classes of the first (or only) head."""
        return len(self.class_names)

    @property
    def heads(self) -> tuple[DatasetInfo, ...]:
        """Every head's label set, this one first."""
        return (self, *self.extra_heads)

    @property
    def head_classes(self) -> tuple[int, ...]:
        """Classes per head: the channels of a net's output, head after head."""
        return tuple(head.num_classes for head in self.heads)

    def palette_array(self) -> np.ndarray:
        """A 256x3 uint8 lookup table: class colours first, the ignore index white, the rest black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        if 0 <= self.ignore_index < 256 and self.ignore_index >= self.num_classes:
            lut[self.ignore_index] = (255, 255, 255)
        return lut


def count_text(classes: tuple[int, ...]) -> str:
    """Classes per head as people read them: "21", or "33 + 3" for a net with two heads."""
    return " + ".join(str(c) for c in classes)


def masks_saved_as_zero_ignore(ignore_index: int, num_classes: int | None = None) -> str:
    """Why labels whose only class is 0 beside the ignore value are refused, and the fix: written once for
    the dataset check and the scores."""
    largest = f" up to {num_classes - 1}" if num_classes else ""
    return (f"this is how masks saved as 0/{ignore_index} look: every foreground pixel equals the ignore value, so "
            f"it is ignored and the scores would be meaningless. Save the masks as class indices (foreground 1, "
            f"...{largest}), e.g. (np.array(mask) > 127).astype(np.uint8) for a binary mask")


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bits of the label index spread over R, G and B)."""
    colors = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC = DatasetInfo("voc", VOC_CLASSES, tuple(voc_colormap(21)))

CAMVID = DatasetInfo(
    "camvid",
    ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
     "bicyclist"),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
)

KITTI_ROAD = DatasetInfo("kitti_road", ("not_road", "road"), ((0, 0, 0), (255, 0, 255)))

CITYSCAPES = DatasetInfo(
    "cityscapes",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
     (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

SYNTHETIC_ROADS = DatasetInfo(
    "synthetic_roads",
    ("sky", "building", "road", "lane_marking", "pole", "car", "tree", "sidewalk"),
    ((70, 130, 180), (70, 70, 70), (128, 64, 128), (255, 220, 0), (250, 120, 30), (0, 0, 142),
     (107, 142, 35), (244, 35, 232)),
)

# The 59 most frequent classes of PASCAL-Context and background (the authors' 59-class task, their order).
PASCAL_CONTEXT = DatasetInfo(
    "pascal_context",
    VOC_CLASSES + (
        "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "clothes", "computer", "cup", "door",
        "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain",
        "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track",
        "tree", "truck", "wall", "water", "window", "wood"),
    tuple(voc_colormap(60)),
)

# SIFT Flow: 33 semantic classes (alphabetical, as in the dataset's label files) and 3 geometric ones, one
# label map each. Some semantic classes (cow, desert, moon, ...) are rare enough to be missing from its 200
# test images; the reference scoring leaves absent classes out of the means.
SIFTFLOW_GEOMETRIC = DatasetInfo("siftflow_geometric", ("sky", "horizontal", "vertical"),
                                 ((70, 130, 180), (128, 64, 128), (220, 160, 60)), task="geometric",
                                 exclude_absent=True)
SIFTFLOW = DatasetInfo(
    "siftflow",
    ("awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
     "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand", "sea",
     "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window"),
    tuple(voc_colormap(34)[1:]), extra_heads=(SIFTFLOW_GEOMETRIC,), exclude_absent=True,
)

# NYUDv2 in the 40-class task of Gupta, Arbelaez and Malik (CVPR 2013), the authors' classes.txt order.
NYUD = DatasetInfo(
    "nyud",
    ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
     "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "books",
     "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person", "night stand",
     "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop"),
    tuple(voc_colormap(41)[1:]),
)
