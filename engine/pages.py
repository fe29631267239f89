"""Page images from the files users have: PDFs (pypdfium2) and PNG/JPEG/TIFF/... images.

Everything becomes an 8-bit grayscale page (255 = paper) in the pixels the library
keeps and serves: an image keeps its own pixels; a PDF page is rendered at
``PDF_WIDTH_PX`` pixels wide.  Bad files give an :class:`~scorestream.core.errors.InputError`
that names the file and says what to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from scorestream.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pbm", ".pgm", ".ppm")
PDF_SUFFIXES = (".pdf",)
PDF_WIDTH_PX = 1670          # rendered PDF page width (2 x the engraver's 835 px: sharp on screens, fine for detection)
MAX_SIDE_PX = 16000          # larger images are refused (a 300 dpi A1 sheet is ~7000 x 9900)
MAX_PIXELS = 120_000_000
MAX_PDF_PAGES = 400
MAX_PIECE_PAGES = 400        # pages of one piece, all files together


@dataclass
class PageImage:
    image: np.ndarray       # uint8 (H, W), 255 = white
    source: str             # file the page came from
    index_in_file: int      # 0-based page number inside a PDF / multi-page TIFF

    @property
    def label(self) -> str:
        return f"{self.source}" + (f" page {self.index_in_file + 1}" if self.index_in_file or self.source.lower().endswith(PDF_SUFFIXES) else "")


def natural_key(name: str) -> list:
    """Sort key: 'page2' before 'page10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def expand_inputs(files: list[str | Path]) -> list[Path]:
    """The page files to read: a PDF / images in the given order, or one folder of images (natural order)."""
    if not files:
        raise InputError("no input files: give a PDF, page images in page order, or a folder of page images")
    paths = [Path(f) for f in files]
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            imgs = sorted((q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES + PDF_SUFFIXES),
                          key=lambda q: natural_key(q.name))
            if not imgs:
                raise InputError(f"{p}: folder has no page images ({', '.join(IMAGE_SUFFIXES[:5])}, …) or PDFs")
            out.extend(imgs)
        elif p.suffix.lower() in IMAGE_SUFFIXES + PDF_SUFFIXES:
            out.append(p)
        else:
            raise InputError(f"{p}: not a PDF or page image (give .pdf, .png, .jpg, .tif, …)")
    return out


def to_gray(im: Image.Image) -> np.ndarray:
    """8-bit grayscale of any PIL image mode; transparency composited on white paper."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        return np.clip(a / (65535.0 if hi > 255 else 255.0) * 255.0, 0, 255).astype(np.uint8)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        return np.clip(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if im.mode == "CMYK":
        im = im.convert("RGB")
    return np.asarray(im.convert("L"), dtype=np.uint8)


def _check_size(w: int, h: int, what: str) -> None:
    if w < 16 or h < 16:
        raise InputError(f"{what}: {w} x {h} px is too small to be a score page")
    if max(w, h) > MAX_SIDE_PX or w * h > MAX_PIXELS:
        raise InputError(f"{what}: {w} x {h} px is too large (limit {MAX_SIDE_PX} px a side, {MAX_PIXELS // 1_000_000} MP); "
                         "scan at 300 dpi or downscale the image")


def _open_image(path: Path) -> Image.Image:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); give a page image")
    Image.MAX_IMAGE_PIXELS = None   # we check the size ourselves, before decoding
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({exc.__class__.__name__}); give a PNG, JPEG or TIFF page image") from None


def iter_image(path: Path) -> Iterator[PageImage]:
    """The pages of an image file (one, or several frames of a multi-page TIFF), decoded one at a time."""
    im = _open_image(path)
    with im:
        n = getattr(im, "n_frames", 1)
        for i in range(n):
            try:
                im.seek(i)
                _check_size(im.width, im.height, str(path))
                im.load()
                frame = ImageOps.exif_transpose(im) if i == 0 else im
                page = PageImage(to_gray(frame), str(path), i)
            except InputError:
                raise
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise InputError(f"{path}: truncated or damaged image ({exc}); export the page again") from None
            yield page


def read_image(path: Path) -> list[PageImage]:
    return list(iter_image(path))


def _no_pages_pdf(path: Path) -> bool:
    """A PDF whose page tree is empty (pdfium refuses to load those, with a confusing message)."""
    try:
        data = path.read_bytes()[:1_000_000]
    except OSError:
        return False
    return data.startswith(b"%PDF") and re.search(rb"/Type\s*/Pages\b", data) is not None \
        and re.search(rb"/Count\s+[1-9]", data) is None and re.search(rb"/Count\s+0\b", data) is not None


def _open_pdf(path: Path):
    import pypdfium2 as pdfium

    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); give a PDF with score pages")
    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        msg = str(exc)
        if "password" in msg.lower():
            raise InputError(f"{path}: the PDF is encrypted (password protected); save an unprotected copy") from None
        if _no_pages_pdf(path):
            raise InputError(f"{path}: the PDF has no pages") from None
        raise InputError(f"{path}: not a readable PDF ({msg}); export it again") from None


def iter_pdf(path: Path, width_px: int = PDF_WIDTH_PX) -> Iterator[PageImage]:
    """The pages of a PDF rendered ``width_px`` wide, one at a time."""
    import pypdfium2 as pdfium

    pdf = _open_pdf(path)
    try:
        n = len(pdf)
        if n == 0:
            raise InputError(f"{path}: the PDF has no pages")
        if n > MAX_PDF_PAGES:
            raise InputError(f"{path}: {n} pages (more than {MAX_PDF_PAGES}); split the PDF into pieces")
        for i in range(n):
            try:
                page = pdf[i]
                w_pt, h_pt = page.get_size()
                if w_pt <= 0 or h_pt <= 0:
                    raise InputError(f"{path} page {i + 1}: the page has no size")
                scale = width_px / w_pt
                _check_size(int(w_pt * scale), int(h_pt * scale), f"{path} page {i + 1}")
                bitmap = page.render(scale=scale, grayscale=True)
                img = to_gray(bitmap.to_pil())
                page.close()
            except pdfium.PdfiumError as exc:
                raise InputError(f"{path} page {i + 1}: damaged PDF ({exc}); export it again") from None
            yield PageImage(img, str(path), i)
    finally:
        pdf.close()


def read_pdf(path: Path, width_px: int = PDF_WIDTH_PX) -> list[PageImage]:
    return list(iter_pdf(path, width_px))


def count_pages(path: Path) -> int:
    """Number of pages of a PDF or image file, without decoding them (checks that it opens)."""
    if path.suffix.lower() in PDF_SUFFIXES:
        pdf = _open_pdf(path)
        try:
            n = len(pdf)
        finally:
            pdf.close()
        if n == 0:
            raise InputError(f"{path}: the PDF has no pages")
        if n > MAX_PDF_PAGES:
            raise InputError(f"{path}: {n} pages (more than {MAX_PDF_PAGES}); split the PDF into pieces")
        return n
    im = _open_image(path)
    with im:
        return int(getattr(im, "n_frames", 1))


def iter_pages(paths: list[Path]) -> Iterator[PageImage]:
    """The pages of already expanded files (:func:`expand_inputs`), in order, one decoded page at a time."""
    for p in paths:
        yield from (iter_pdf(p) if p.suffix.lower() in PDF_SUFFIXES else iter_image(p))


def check_inputs(files: list[str | Path]) -> tuple[list[Path], int]:
    """The page files of ``files`` and their total page count; every file is opened (not decoded),
    so unreadable files and oversized documents are refused before any work is done."""
    paths = expand_inputs(files)
    total = 0
    for p in paths:
        total += count_pages(p)
        if total > MAX_PIECE_PAGES:
            raise InputError(f"{p}: the piece has more than {MAX_PIECE_PAGES} pages; split it into pieces")
    return paths, total


def read_pages(files: list[str | Path]) -> list[PageImage]:
    """All pages of the given files, in order."""
    return list(iter_pages(expand_inputs(files)))
