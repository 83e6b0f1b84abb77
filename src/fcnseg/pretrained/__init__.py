"""Trained nets that ship inside fcnseg, reached by name wherever a checkpoint is taken.

    fcnseg.load(NAME).predict("street.jpg")      # the Python API
    fcnseg predict NAME street.jpg --out masks      # and every command: eval, export, serve
    init_from: NAME                                 # training starts from it (other classes: surgery)

:data:`SHIPPED` lists them: name -> the file in this folder, its SHA-256 (checked on every use, so a damaged
file is refused in one line, never loaded), its model card (a Markdown file beside it) and one line saying
what it is. :func:`resolve` turns what a user typed into a path; a file or folder of that name wins over a
shipped net. :func:`pack` writes such a file from a training checkpoint: the weights in float16 and the spec,
nothing of the training's state (``scripts/pack_pretrained.py`` is its command line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from fcnseg.errors import ConfigError, WeightsError, WriteError, listing
from fcnseg.transfer import file_digest

if TYPE_CHECKING:
    import torch

# The folder the shipped files are in: this package's own (pyproject.toml's package-data carries them).
FOLDER = Path(__file__).resolve().parent

# name -> {"file": in FOLDER, "sha256": as scripts/pack_pretrained.py prints it, "card": the model card beside
# it, "description": one line}.
SHIPPED: dict[str, dict[str, str]] = {
    "camvid-fcn8s": {
        "file": "camvid-fcn8s.pth",
        "sha256": "f67c1c5ed676a31dad6bac25f1828550e734fe6b1035007faeb41505fd20e4b3",
        "card": "camvid-fcn8s.md",
        "description": "FCN-8s, VGG16-BN at width 0.125, fast geometry, trained from scratch on CamVid's 11 classes "
                       "(val mean IU 67.5)",
    },
}


# path -> (size, mtime_ns, inode) of a shipped file whose SHA-256 was found right: one process resolves a name
# more than once (training's init_from reads the architecture, then the weights), and the file is hashed once.
_INTACT: dict[Path, tuple[int, int, int]] = {}


def names() -> list[str]:
    """The names of the nets shipped with fcnseg, sorted."""
    return sorted(SHIPPED)


def _entry(name: str) -> dict[str, str]:
    if name not in SHIPPED:
        shipped = listing(names()) or "none yet"
        raise WeightsError(f"no net named {name!r} ships with fcnseg; the shipped ones are: {shipped}")
    return SHIPPED[name]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, in hex (the downloader's digest: :func:`fcnseg.transfer.file_digest`)."""
    return file_digest(path, "sha256")


def path_of(name: str) -> Path:
    """The packaged file of the shipped net ``name``, checked: a WeightsError (one line: the file, the expected
    and the found SHA-256, the fix) when it is missing or its bytes are not the ones shipped."""
    entry = _entry(name)
    path = FOLDER / entry["file"]
    expected = entry["sha256"]
    fix = (f"reinstall fcnseg (pip install --force-reinstall fcnseg), or in a clone of its repository "
           f"restore the file (git checkout -- src/fcnseg/pretrained/{entry['file']})")
    if not path.is_file():
        raise WeightsError(f"{path}: the file of the shipped net {name} is missing (expected sha256 {expected}, "
                           f"found no file); {fix}")
    stat = path.stat()
    if _INTACT.get(path) == (stat.st_size, stat.st_mtime_ns, stat.st_ino):
        return path
    found = file_sha256(path)
    if found != expected:
        raise WeightsError(f"{path} is damaged or not the file shipped as {name}: expected sha256 {expected}, "
                           f"found {found}; {fix}")
    _INTACT[path] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return path


def card_of(name: str) -> Path:
    """The model card (Markdown) of the shipped net ``name``: what it was trained on, how, and how well."""
    return FOLDER / _entry(name)["card"]


def _looks_like_a_name(text: str) -> bool:
    """No folder in it and no file suffix: what a user types for a net's name, not for a file's path."""
    return bool(text) and "/" not in text and os.sep not in text and not Path(text).suffix


def resolve(source: str | os.PathLike) -> Path:
    """The path every model loader reads for ``source``: what the user typed (``fcnseg.load``, the checkpoint of
    ``fcnseg predict``, ``eval``, ``export`` and ``serve``, training's ``init_from``).

    1. An existing file or folder of that name is that path: the user's own file wins over a shipped net of
       the same name (a checkpoint saved as ``camvid-fcn8s`` in the working folder is the one loaded).
    2. Else the name of a shipped net (:func:`names`) is its packaged file, checked by :func:`path_of`.
    3. Else the path as given, so that the loader's own message says it was not found; except for something
       that looks like a name (no folder, no suffix), refused here with the shipped names listed.
    """
    text = os.fspath(source)
    path = Path(text)
    try:
        if path.exists():
            return path
    except OSError as error:  # a name too long to look up: no file, nor a shipped net's name
        raise WeightsError(f"checkpoint {text} cannot be looked up: {error.strerror or error}") from None
    if text in SHIPPED:
        return path_of(text)
    if _looks_like_a_name(text):
        shipped = listing(names()) or "none yet"
        raise WeightsError(f"{text} is neither a file nor a net shipped with fcnseg (shipped: {shipped}): "
                           "give a checkpoint's path or one of those names")
    return path


def pack(checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype | None = None,
         overwrite: bool = False) -> str:
    """Write the smallest checkpoint that loads everywhere a checkpoint does: ``checkpoint``'s validated weights
    (``model_state_dict``: the moving average when the run kept one) cast to ``dtype`` (default float16;
    integer buffers such as BatchNorm's step counters as they are) with its spec and classes, format version
    2, and nothing of the training (optimizer, scheduler, RNG, training weights, config). Loading casts the
    weights back to float32, so predictions run in float32.

    ``out`` is written atomically; an existing ``out`` (or one made while packing) is refused unless ``overwrite``,
    and ``checkpoint`` itself always. Returns the SHA-256 of ``out`` (for :data:`SHIPPED`).
    """
    import torch

    from fcnseg.atomic import before_landing
    from fcnseg.checkpoint import FORMAT, VERSION, checked_checkpoint, read_checkpoint, write_checkpoint

    dtype = torch.float16 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:  # "float16" too: a torch.dtype is meant
        raise ConfigError(f"pack casts weights to a floating-point torch.dtype (torch.float16, torch.bfloat16, "
                          f"torch.float32), not {dtype!r}")
    source = resolve(checkpoint)
    out = Path(out)
    if out.is_dir():
        raise WriteError(f"{out} is a folder: give the file to write in it, e.g. {out / 'net.pth'}")
    if out.exists() and os.path.realpath(out) == os.path.realpath(source):
        raise WriteError(f"{out} is the checkpoint being packed: give another output file")
    if out.exists() and not overwrite:
        raise WriteError(f"{out} exists: give another output file, or overwrite=True (--overwrite) to replace it")
    spec, state = checked_checkpoint(read_checkpoint(source), source)
    packed = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
    overflowed = [key for key, value in packed.items() if value.is_floating_point() and not value.isfinite().all()]
    if overflowed:
        raise WeightsError(f"{source}: {listing(overflowed, 3)} exceed the range of {dtype} (to infinity when "
                           "cast): pack in torch.bfloat16 or torch.float32 instead (--dtype)")

    def refuse_if_made_meanwhile(path: Path, tmp: Path) -> None:  # the check above cannot see what appears later
        if not overwrite and os.path.lexists(path):
            raise WriteError(f"{path} was made by another process while it was being packed, and was left as it "
                             "is: give another output file, or overwrite=True (--overwrite) to replace it")

    with before_landing([out], refuse_if_made_meanwhile):
        write_checkpoint({"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "model_state_dict": packed},
                         out)
    return file_sha256(out)


__all__ = ["FOLDER", "SHIPPED", "card_of", "file_sha256", "names", "pack", "path_of",
           "resolve"]
