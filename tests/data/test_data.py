"""Tests of qcompile.data: sources, presets, streaming, splits, labels and error messages."""

from __future__ import annotations

import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qcompile.data import (
    CIFAR10_CLASSES,
    DataError,
    DataWarning,
    Preprocess,
    calib_eval_split,
    cifar10_classes,
    load_labels,
    open_dataset,
    preprocess_from_options,
    preset,
)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


# -- helpers / fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """shared/data: $QCOMPILE_DATA, else <repo>/../shared/data; skip if neither exists."""
    env = os.environ.get("QCOMPILE_DATA")
    repo = Path(__file__).resolve().parents[2]
    for cand in ([Path(env)] if env else []) + [repo.parent / "shared" / "data"]:
        if (cand / "cifar10_test_dev.npz").is_file():
            return cand
    pytest.skip("shared data dir not found (set QCOMPILE_DATA)")


def rgb(h: int, w: int, value=None, seed: int = 0) -> np.ndarray:
    if value is not None:
        return np.full((h, w, 3), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def one_line_error(excinfo, *fragments: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith("data: "), msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def expected(v: float, scale: float, mean, std) -> np.ndarray:
    """The documented maths, evaluated in float64 and rounded once to float32."""
    return np.float32((v * scale - np.asarray(mean, np.float64)) / np.asarray(std, np.float64))


# -- presets and preprocessing ------------------------------------------------------------------
def test_cifar_preset_known_pixel(tmp_path):
    ds = open_dataset(save(tmp_path / "g.png", rgb(32, 32, 128)), preset("cifar"))
    x = next(ds.batches()).x
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    want = np.float32((128 / 255 - MEAN) / STD)
    np.testing.assert_array_equal(x[0, :, 5, 7], want)
    assert np.all(x[0] == want[:, None, None])


def test_lite0_none_and_imagenet_known_pixels(tmp_path):
    img = save(tmp_path / "g.png", rgb(224, 224, 128))
    x = next(open_dataset(img, preset("lite0")).batches()).x
    assert np.all(x == np.float32(1 / 128))  # (128 - 127) / 128
    x = next(open_dataset(img, preset("none")).batches()).x
    assert np.all(x == 128.0)
    # 300x400 constant image: resize 256 + crop 224 keeps the constant value.
    big = save(tmp_path / "big.png", rgb(300, 400, 128))
    x = next(open_dataset(big, preset("imagenet")).batches()).x
    assert x.shape == (1, 3, 224, 224)
    assert np.all(x == expected(128, 1 / 255, MEAN, STD)[:, None, None])


def test_preset_values_and_size_override():
    im = preset("imagenet")
    assert (im.resize, im.crop, im.size, im.scale) == (256, 224, None, 1 / 255)
    assert im.mean == (0.485, 0.456, 0.406) and im.std == (0.229, 0.224, 0.225)
    assert preset("cifar").mean == im.mean and preset("cifar").size == 32
    lite = preset("lite0")
    assert (lite.scale, lite.mean, lite.std) == (1.0, (127.0,) * 3, (128.0,) * 3)
    assert preset("none").is_identity and not im.is_identity
    for name in ("imagenet", "cifar", "lite0", "none"):
        p = preset(name, size=96)
        assert (p.resize, p.crop, p.size) == (None, None, 96)
    assert preset("IMAGENET") == im and hash(im) == hash(preset("imagenet"))


def test_geometry_follows_torchvision_rules():
    p = Preprocess(resize=64)
    assert p.apply_geometry(Image.new("RGB", (100, 50))).size == (128, 64)  # (w, h)
    assert p.apply_geometry(Image.new("RGB", (50, 75))).size == (64, 96)
    # Centre crop of 4 from w=10, h=7: top=round(1.5)=2, left=round(3.0)=3.
    a = np.zeros((7, 10, 3), np.uint8)
    a[..., 0] = np.arange(7)[:, None]
    a[..., 1] = np.arange(10)[None, :]
    out = np.asarray(Preprocess(crop=4).apply_geometry(Image.fromarray(a)))
    assert out[0, 0, 0] == 2 and out[0, 0, 1] == 3 and out.shape == (4, 4, 3)
    # Already at the final size: geometry skipped entirely (e.g. pre-cropped 224 images).
    assert not preset("imagenet").needs_geometry(224, 224)
    assert preset("imagenet").needs_geometry(224, 300)


def test_array_and_file_sources_give_identical_pixels(tmp_path):
    imgs = np.stack([rgb(40, 50, seed=s) for s in range(3)])
    np.savez(tmp_path / "a.npz", images=imgs)
    for i, im in enumerate(imgs):
        save(tmp_path / "flat" / f"{i}.png", im)
    pre = Preprocess(resize=32, crop=24, scale=1 / 255, mean=MEAN.tolist(), std=STD.tolist())
    xa = next(open_dataset(tmp_path / "a.npz", pre).batches(8)).x
    xf = next(open_dataset(tmp_path / "flat", pre).batches(8)).x
    assert xa.shape == (3, 3, 24, 24)
    np.testing.assert_array_equal(xa, xf)


def test_preprocess_from_options():
    p = preprocess_from_options("imagenet", mean="0.5,0.5,0.5", std="0.25", scale="1/255")
    assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.25,) * 3 and p.scale == 1 / 255
    assert (p.resize, p.crop) == (256, 224)
    assert preprocess_from_options("imagenet", resize=0, crop=0).resize is None
    q = preprocess_from_options("lite0", size=128)
    assert (q.resize, q.crop, q.size) == (None, None, 128)
    assert preprocess_from_options("cifar") == preset("cifar")
    assert preprocess_from_options(preset("none"), mean=[1, 2, 3]).mean == (1.0, 2.0, 3.0)
    with pytest.raises(DataError) as ei:
        preprocess_from_options("none", mean="1,2")
    one_line_error(ei, "mean", "0.485,0.456,0.406")
    with pytest.raises(DataError) as ei:
        preprocess_from_options("none", std="1,0,1")
    one_line_error(ei, "std")
    with pytest.raises(DataError) as ei:
        preset("vgg")
    one_line_error(ei, "'vgg'", "imagenet, cifar, lite0, none")


# -- sources ------------------------------------------------------------------------------------
def test_npz_uint8_with_labels_and_classes(tmp_path):
    imgs = np.stack([rgb(8, 8, v) for v in range(10)])
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(10) % 3, classes=np.array(list("abc")))
    ds = open_dataset(tmp_path / "d.npz")
    assert len(ds) == 10 and ds.kind == "npz" and ds.class_names == ["a", "b", "c"]
    assert ds.labels.dtype == np.int64 and not ds.is_preprocessed
    bs = list(ds.batches(4))
    assert [len(b.indices) for b in bs] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.indices for b in bs]), np.arange(10))
    np.testing.assert_array_equal(bs[1].labels, np.arange(4, 8) % 3)
    assert bs[2].x[1, 2, 0, 0] == 9.0  # 'none' preset: raw pixel value
    sel = list(ds.batches(3, indices=[9, 0, 5], limit=2))
    assert len(sel) == 1 and sel[0].indices.tolist() == [9, 0] and sel[0].x[0, 0, 0, 0] == 9.0


def test_npz_float_nchw_passthrough(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(5))
    ds = open_dataset(tmp_path / "f.npz", preset("imagenet"))
    assert ds.is_preprocessed and ds.preprocess_ignored
    b = next(ds.batches(10))
    np.testing.assert_array_equal(b.x, x)  # bit-identical: no second normalisation
    assert b.labels.tolist() == [0, 1, 2, 3, 4]
    assert not open_dataset(tmp_path / "f.npz").preprocess_ignored
    # First 4-D array when no images/x/data key; float64 is cast to float32.
    np.savez(tmp_path / "g.npz", meta=np.arange(3), tensor=x.astype(np.float64))
    b = next(open_dataset(tmp_path / "g.npz").batches())
    assert b.x.dtype == np.float32 and b.labels is None
    np.testing.assert_array_equal(b.x, x)


def test_npy_both_layouts(tmp_path):
    imgs = np.stack([rgb(6, 6, v) for v in (0, 255)])
    np.save(tmp_path / "u.npy", imgs)
    b = next(open_dataset(tmp_path / "u.npy", preset("lite0", size=6)).batches())
    assert b.x[0, 0, 0, 0] == np.float32(-127 / 128) and b.x[1, 0, 0, 0] == np.float32(1.0)
    x = np.ones((3, 1, 5, 5), np.float32)
    np.save(tmp_path / "f.npy", x)
    ds = open_dataset(tmp_path / "f.npy")
    assert ds.kind == "npy" and ds.is_preprocessed and next(ds.batches()).x.shape == (3, 1, 5, 5)


def test_npy_streams_without_loading_whole_file(tmp_path):
    n = 4000
    arr = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8,
                                    shape=(n, 32, 32, 3))
    arr[:] = (np.arange(n, dtype=np.int64) % 251).astype(np.uint8)[:, None, None, None]
    arr.flush()
    del arr
    ds = open_dataset(tmp_path / "big.npy", preset("cifar"))
    whole = n * 32 * 32 * 3  # 12 MB of uint8, 48 MB as float32; one batch is ~0.6 MB
    tracemalloc.start()
    try:
        seen = 0
        for b in ds.batches(50):
            assert b.x.shape == (len(b.indices), 3, 32, 32)
            seen += len(b.indices)
            last = b
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n
    assert last.x[-1, 0, 0, 0] == expected((n - 1) % 251, 1 / 255, MEAN, STD)[0]
    assert peak < whole / 4, f"peak {peak} bytes: the file was loaded whole"


def test_flat_folder_and_imagefolder(tmp_path):
    flat = tmp_path / "flat"
    for name, v in [("b.PNG", 2), ("a.jpg", 1), ("c.WebP", 3)]:
        save(flat / name, rgb(8, 8, v * 50))
    (flat / "notes.txt").write_text("x")
    save(flat / ".hidden.png", rgb(8, 8, 0))
    ds = open_dataset(flat)
    assert ds.kind == "folder" and ds.labels is None and ds.class_names is None
    assert [Path(f).name for f in ds.files] == ["a.jpg", "b.PNG", "c.WebP"]

    root = tmp_path / "tree"
    save(root / "dog" / "1.png", rgb(8, 8, 10))
    save(root / "cat" / "z.bmp", rgb(8, 8, 20))
    save(root / "cat" / "sub" / "a.png", rgb(8, 8, 30))
    save(root / "cat" / "y.png", rgb(8, 8, 40))
    ds = open_dataset(root)
    assert ds.kind == "imagefolder" and ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1]
    b = next(ds.batches(8))
    assert b.labels.tolist() == [0, 0, 0, 1] and b.x[:, 0, 0, 0].tolist() == [30, 40, 20, 10]


def test_folder_mixed_sizes_need_a_size(tmp_path):
    save(tmp_path / "a.png", rgb(8, 8, 1))
    save(tmp_path / "b.png", rgb(10, 12, 1))
    with pytest.raises(DataError) as ei:
        list(open_dataset(tmp_path).batches())
    one_line_error(ei, str(tmp_path), "--size")
    assert next(open_dataset(tmp_path, Preprocess(size=9)).batches()).x.shape == (2, 3, 9, 9)


def test_corrupt_images_warn_skip_or_raise(tmp_path):
    for i in range(4):
        save(tmp_path / f"{i}.png", rgb(8, 8, i))
    (tmp_path / "1.png").write_bytes(b"not an image at all")
    good = (tmp_path / "2.png").read_bytes()
    (tmp_path / "2.png").write_bytes(good[: len(good) // 2])  # truncated
    msgs: list[str] = []
    ds = open_dataset(tmp_path, warn=msgs.append)
    bs = list(ds.batches(2))
    assert [b.indices.tolist() for b in bs] == [[0, 3]]  # batch topped up past bad files
    assert len(msgs) == 2 and "1.png" in msgs[0] and "2.png" in msgs[1]
    assert all("\n" not in m for m in msgs) and len(ds.skipped) == 2
    list(ds.batches(2))
    assert len(msgs) == 2  # one warning per file, not per pass
    with pytest.warns(DataWarning) as rec:  # default: warnings.warn(..., DataWarning)
        list(open_dataset(tmp_path).batches())
    assert ["1.png" in str(w.message) for w in rec] == [True, False]
    with pytest.raises(DataError) as ei:
        list(open_dataset(tmp_path, strict=True).batches())
    one_line_error(ei, "1.png")
    with pytest.raises(DataError) as ei:
        open_dataset(tmp_path / "1.png")  # a single broken --image fails at open
    one_line_error(ei, "1.png")


# -- split ---------------------------------------------------------------------------------------
def test_calib_eval_split_deterministic_and_disjoint():
    c1, e1 = calib_eval_split(1000, 100, seed=3)
    c2, e2 = calib_eval_split(1000, 100, seed=3)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(e1, e2)
    assert len(c1) == 100 and len(e1) == 900 and c1.dtype == np.int64
    assert not set(c1) & set(e1) and set(c1) | set(e1) == set(range(1000))
    assert np.all(np.diff(c1) > 0)
    assert not np.array_equal(calib_eval_split(1000, 100, seed=4)[0], c1)
    c, e = calib_eval_split(50, 10, seed=0, n_eval=5)
    assert len(c) == 10 and len(e) == 5 and not set(c) & set(e)
    with pytest.raises(DataError) as ei:
        calib_eval_split(50, 40, n_eval=20)
    one_line_error(ei, "40", "20", "50")


# -- labels --------------------------------------------------------------------------------------
def test_label_files(tmp_path):
    (tmp_path / "c.txt").write_text("\ncat\ndog \n\n")
    assert load_labels(tmp_path / "c.txt") == ["cat", "dog"]
    (tmp_path / "h.tsv").write_text("index\twnid\tname\n1\tn2\tdog\n0\tn1\tcat\n")
    assert load_labels(tmp_path / "h.tsv") == ["cat", "dog"]
    (tmp_path / "gap.tsv").write_text("0\tcat\n2\tdog\n")
    with pytest.raises(DataError) as ei:
        load_labels(tmp_path / "gap.tsv")
    one_line_error(ei, "gap.tsv")
    (tmp_path / "blank.txt").write_text("cat\n\ndog\n")
    with pytest.raises(DataError) as ei:
        load_labels(tmp_path / "blank.txt")
    one_line_error(ei, "blank.txt", "line 2")
    assert cifar10_classes() == list(CIFAR10_CLASSES) and len(CIFAR10_CLASSES) == 10


# -- errors --------------------------------------------------------------------------------------
def test_error_messages_are_one_line(tmp_path):
    def err(path, *frags, **kw):
        with pytest.raises(DataError) as ei:
            open_dataset(path, **kw)
        return one_line_error(ei, str(path), *frags)

    err(tmp_path / "nope.npz", "does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    err(tmp_path / "empty", "contains no images", ".jpg, .jpeg, .png, .bmp, .webp")
    np.savez(tmp_path / "k.npz", a=np.arange(3), b=np.zeros(2))
    err(tmp_path / "k.npz", "no 'images' array (keys: a, b)", "uint8 NHWC", "float32 NCHW")
    np.savez(tmp_path / "g.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    err(tmp_path / "g.npz", "1 channels", "RGB")
    np.savez(tmp_path / "l.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.arange(2))
    err(tmp_path / "l.npz", "3 images but 2 labels")
    np.savez(tmp_path / "z.npz", images=np.zeros((0, 8, 8, 3), np.uint8))
    err(tmp_path / "z.npz", "0 images")
    np.save(tmp_path / "i.npy", np.zeros((2, 3, 4, 4), np.int32))
    err(tmp_path / "i.npy", "int32")
    np.save(tmp_path / "h.npy", np.zeros((2, 8, 8, 3), np.float32))
    err(tmp_path / "h.npy", "NHWC", "transpose(0, 3, 1, 2)")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    err(tmp_path / "bad.npz", "cannot read")
    (tmp_path / "t.txt").write_text("hello")
    err(tmp_path / "t.txt", "not a supported data source")
    small = save(tmp_path / "s.png", rgb(10, 10, 1))
    with pytest.raises(DataError) as ei:
        list(open_dataset(small, Preprocess(crop=16)).batches())
    one_line_error(ei, "s.png", "--resize 16")
    ds = open_dataset(small)
    for kwargs in ({"indices": [1]}, {"indices": [-1]}):
        with pytest.raises(DataError) as ei:
            ds.batches(**kwargs)  # validated eagerly, before iteration
        one_line_error(ei, "out of range")
    with pytest.raises(DataError):
        ds.batches(0)
    assert isinstance(DataError("x"), ValueError)


def test_npz_is_not_loaded_at_open(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    ds = open_dataset(tmp_path / "c.npz")
    assert len(ds) == 4 and ds._reader._array is None  # shape came from the member header
    next(ds.batches())
    assert ds._reader._array is not None
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        assert zf.namelist() == ["images.npy"]


# -- real data (shared/data) ---------------------------------------------------------------------
def test_real_cifar_npz(shared_data):
    ds = open_dataset(shared_data / "cifar10_test_dev.npz", preset("cifar"))
    assert len(ds) == 5000 and ds.class_names == cifar10_classes()
    assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(10))
    calib, ev = ds.split(500, seed=0)
    b = next(ds.batches(64, indices=calib))
    with np.load(shared_data / "cifar10_test_dev.npz") as z:
        raw = z["images"][calib[:64]].astype(np.float64)
    want = ((raw / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(b.x, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(b.labels, ds.labels[calib[:64]])


def test_real_imagenet_samples_and_labels(shared_data):
    ds = open_dataset(shared_data / "imagenet_samples_120.npz", preset("imagenet"))
    assert len(ds) == 120 and ds.labels.max() < 1000
    b = next(ds.batches(8, limit=8))
    with np.load(shared_data / "imagenet_samples_120.npz") as z:
        raw = z["images"][:8]
    # Already 224x224 centre crops: no second resize/crop, only normalisation.
    np.testing.assert_array_equal(b.x, preset("imagenet").normalize(raw))
    names = load_labels(shared_data / "imagenet_classes.tsv")
    assert len(names) == 1000 and names[0] == "tench" and names[292] == "tiger"


def test_real_tiger_image(shared_data):
    path = shared_data / "tiger128.jpg"
    for pre in (preset("lite0"), preset("lite0", size=224), preset("imagenet")):
        ds = open_dataset(path, pre)
        assert ds.kind == "image" and len(ds) == 1
        x = next(ds.batches()).x
        assert x.shape == (1, 3, 224, 224) and np.isfinite(x).all()
    x = next(open_dataset(path, preset("lite0", size=224)).batches()).x
    assert x.min() >= -127 / 128 and x.max() <= 1.0
    assert next(open_dataset(path, preset("cifar")).batches()).x.shape == (1, 3, 32, 32)
