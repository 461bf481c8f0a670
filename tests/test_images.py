"""Scanning folders for images and decoding them to upright RGB."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import pattern_image, write_bad_image, write_image, write_truncated_jpeg
from PIL import Image

from simsearch import ImageError, load_image, scan
from simsearch.images import is_candidate, sniff_image


def relpaths(root, **kwargs) -> list[str]:
    return [f.relpath for f in scan([root], **kwargs)]


# ----------------------------------------------------------------------------- scan


def test_scan_is_recursive_sorted_and_skips_hidden(tmp_path):
    root = tmp_path / "pics"
    for rel in ["b/z.jpg", "b/a.png", "a/deep/er/x.jpg", "c.jpg", "A.jpg", ".hidden.jpg", ".cache/y.jpg", "b/.t.jpg"]:
        write_image(root / rel)
    (root / "notes.txt").write_text("hello")
    (root / "README").write_text("no extension, not an image")
    expected = ["A.jpg", "a/deep/er/x.jpg", "b/a.png", "b/z.jpg", "c.jpg"]
    assert relpaths(root) == expected
    assert relpaths(root) == expected  # deterministic
    infos = list(scan([root]))
    for info in infos:
        st = info.path.stat()
        assert info.root == root.resolve()
        assert (info.size, info.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_scan_several_roots_and_a_single_file(tmp_path):
    write_image(tmp_path / "one" / "a.jpg")
    write_image(tmp_path / "two" / "b.jpg")
    single = write_image(tmp_path / "single.png")
    found = list(scan([tmp_path / "one", tmp_path / "two", single]))
    assert [(f.root.name, f.relpath) for f in found] == [
        ("one", "a.jpg"),
        ("two", "b.jpg"),
        (tmp_path.name, "single.png"),
    ]


def test_scan_missing_folder_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="folder not found"):
        list(scan([tmp_path / "missing"]))


def test_scan_detects_extensionless_images_by_content(tmp_path):
    root = tmp_path / "r"
    write_image(root / "jpeg_without_extension", fmt="JPEG")
    write_image(root / "png_without_extension", fmt="PNG")
    pattern_image(1).save(root / "webp_data.bin", format="WEBP")
    write_image(root / "UPPER.JPG")
    (root / "text_file").write_text("plain text")
    (root / "data.bin").write_bytes(os.urandom(64))
    assert relpaths(root) == ["UPPER.JPG", "jpeg_without_extension", "png_without_extension", "webp_data.bin"]
    assert sniff_image(root / "jpeg_without_extension")
    assert not sniff_image(root / "text_file")
    assert not sniff_image(root / "does-not-exist")
    # an image extension makes a candidate; whether it decodes is found out later
    bad = write_bad_image(root / "fake.jpg")
    assert is_candidate(bad)
    assert "fake.jpg" in relpaths(root)
    with pytest.raises(ImageError, match="not an image"):
        load_image(bad)


def test_scan_symlinks(tmp_path):
    root = tmp_path / "root"
    write_image(root / "real" / "a.jpg")
    outside = write_image(tmp_path / "outside" / "o.jpg")
    (root / "link_inside.jpg").symlink_to(root / "real" / "a.jpg")
    (root / "link_outside.jpg").symlink_to(outside)
    (root / "linked_dir").symlink_to(root / "real", target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    (root / "outside_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert relpaths(root) == ["real/a.jpg"]
    followed = relpaths(root, follow_symlinks=True)  # must terminate despite the loop
    assert "link_inside.jpg" in followed
    # the folder reached twice (as itself and through linked_dir) is scanned once
    assert len({"real/a.jpg", "linked_dir/a.jpg"} & set(followed)) == 1
    assert "link_outside.jpg" not in followed
    assert not any(p.startswith(("outside_dir/", "real/loop/", "linked_dir/loop/")) for p in followed)
    assert len(followed) == len(set(followed)) == 2


# ----------------------------------------------------------------------------- load_image


def test_load_image_paths_bytes_and_pil(tmp_path):
    path = write_image(tmp_path / "x.png", seed=4, fmt="PNG")
    a = load_image(path)
    b = load_image(path.read_bytes())
    c = load_image(Image.open(path))
    d = load_image(str(path))
    assert a.mode == "RGB" and a.size == (64, 48)
    for other in (b, c, d):
        assert np.array_equal(np.asarray(a), np.asarray(other))
    assert np.array_equal(np.asarray(a), np.asarray(pattern_image(4)))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)
    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[5, 10], np.asarray(out)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda: Image.new("L", (16, 16), 128), (128, 128, 128)),
        (lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("1", (16, 16), 1), (255, 255, 255)),
    ],
    ids=["grayscale", "cmyk", "bilevel"],
)
def test_modes_convert_to_rgb(tmp_path, make, expect):
    path = tmp_path / "img.jpg" if make().mode == "CMYK" else tmp_path / "img.png"
    make().save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out)[8, 8].astype(int) - expect).max() <= 8


def test_rgba_alpha_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (20, 10), (0, 0, 255, 255))
    img.paste((0, 0, 0, 0), (0, 0, 10, 10))  # left half fully transparent black
    path = tmp_path / "alpha.png"
    img.save(path)
    out = np.asarray(load_image(path))
    assert tuple(out[5, 2]) == (255, 255, 255)
    assert tuple(out[5, 15]) == (0, 0, 255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (20, 10), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    img.paste(1, (10, 0, 20, 10))
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    out = np.asarray(load_image(path))
    assert tuple(out[5, 2]) == (255, 255, 255)  # transparent index → white, not black
    assert tuple(out[5, 15]) == (0, 200, 0)


def test_16_bit_grayscale_is_rescaled(tmp_path):
    arr = np.tile(np.linspace(1000, 60000, 32).astype(np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.shape == (8, 32, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()  # still a gradient
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = np.asarray(load_image(path))
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60


def test_truncated_file_is_an_image_error(tmp_path):
    path = write_truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match=r"cut\.jpg"):
        load_image(path)
    png = tmp_path / "cut.png"
    write_image(png, fmt="PNG", size=(120, 90))
    png.write_bytes(png.read_bytes()[:200])
    with pytest.raises(ImageError):
        load_image(png)


def test_pixel_limit(tmp_path):
    path = write_image(tmp_path / "big.jpg", size=(64, 48))
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(path, max_pixels=64 * 48 - 1)
    assert load_image(path, max_pixels=64 * 48).size == (64, 48)
    assert load_image(path, max_pixels=None).size == (64, 48)


def test_unusable_sources_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError):
        load_image(b"definitely not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError):
        load_image(tmp_path / "empty.jpg")


def test_draft_decodes_large_jpegs_smaller_but_not_below_the_size(tmp_path):
    path = tmp_path / "large.jpg"
    pattern_image(2, size=(1600, 1200)).save(path, quality=90)
    full = load_image(path)
    small = load_image(path, draft_size=224)
    assert full.size == (1600, 1200)
    assert min(small.size) >= 224 and small.size[0] < 1600
    assert abs(small.size[0] / small.size[1] - 4 / 3) < 0.02
    png = io.BytesIO()
    pattern_image(2, size=(640, 480)).save(png, format="PNG")
    assert load_image(png.getvalue(), draft_size=100).size == (640, 480)  # draft only applies to JPEG
