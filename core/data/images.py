"""Finding and decoding image files."""

from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from core.errors import InputError

JPEG_SUFFIXES = {".jpg", ".jpeg"}
# An image larger than this many pixels is refused rather than decoded (a 16k x 16k image
# alone decodes to 768 MB); Pillow's own bomb check only warns below twice its limit.
MAX_PIXELS = 64_000_000


def is_junk(path: Path) -> bool:
    """Hidden files and folders and OS droppings (Thumbs.db, .DS_Store, AppleDouble '._x.jpg')."""
    return any(part.startswith(".") for part in path.parts) or path.name.lower() in {"thumbs.db", "desktop.ini"}


def has_extension(path: Path, extension: str) -> bool:
    """Whether the file name ends in `.extension`, in any case: 'jpg' matches photo.JPG."""
    return path.suffix.lower() == "." + extension.lower()


def class_key(name: str) -> str:
    """A class name as labels and folders are compared: Unicode NFC, so 'café' typed on one system matches a
    folder named 'café' on another (macOS, for one, stores names decomposed, NFD)."""
    return unicodedata.normalize("NFC", name)


def find_jpegs(folder: Path) -> list[Path]:
    """JPEG files (.jpg / .jpeg in any case) anywhere below `folder`, sorted for reproducibility.
    Symbolic links are never followed (validation refuses them, see `symlinks_below`)."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in JPEG_SUFFIXES
        and p.is_file()
        and not p.is_symlink()
        and not is_junk(p.relative_to(folder))
    )


def symlinks_below(folder: Path) -> list[Path]:
    """Symbolic links (to files or folders, broken or not) anywhere below `folder`, hidden ones aside, sorted.
    Image folders may hold none: a link can lead outside the folder the configuration names."""
    links: list[Path] = []
    pending = [Path(folder)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except PermissionError:  # unreadable: nothing below it is read either (as in find_jpegs)
            continue
        for entry in entries:
            if is_junk(Path(entry.name)):
                continue
            if entry.is_symlink():
                links.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return sorted(links)


def decode_rgb(path: Path) -> Image.Image:
    """Decode an image file to RGB whatever its mode (grayscale, CMYK, palette, 16-bit)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InputError(
                        f"image {path} is {image.width} x {image.height} pixels, over the limit of {MAX_PIXELS:,}: "
                        "downscale it or remove it from the folder"
                    )
                if path.suffix.lower() in JPEG_SUFFIXES and image.format != "JPEG":
                    raise InputError(
                        f"image {path} is a {image.format} file named {path.suffix}: convert it to JPEG or rename it"
                    )
                image = ImageOps.exif_transpose(image)
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    image = image.point(lambda v: v / 256).convert("L")
                return image.convert("RGB")
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputError(
            f"image {path} cannot be decoded ({type(exc).__name__}: {exc}): replace or remove the file"
        ) from None
