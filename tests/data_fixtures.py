"""Builders of tiny on-disk source datasets for tests/test_data.py (offline, a few KB each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# (breed, class id, species: 1 cat / 2 dog); official line: "NAME CLASS-ID SPECIES BREED-ID"
PETS_BREEDS = [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1)]


def trimap(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A Pets-style trimap: 1 pet (ellipse), 3 border band around it, 2 background."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    r = ((yy - cy) / (h * 0.3)) ** 2 + ((xx - cx) / (w * 0.3)) ** 2
    t = np.full((h, w), 2, np.uint8)
    t[r < 1.3] = 3
    t[r < 0.8] = 1
    return t


def make_pets(root: Path, per_breed_trainval: int = 5, per_breed_test: int = 2) -> dict:
    """A miniature Oxford-IIIT Pet in torchvision's layout under ``root/oxford-iiit-pet``.

    Oddities (like the real archive): one truncated JPEG, one grayscale JPEG, one CMYK JPEG,
    one RGBA PNG saved under a .jpg name, one image without a trimap, one trimap of the wrong
    size. Returns the names of each oddity and the expected counts."""
    base = root / "oxford-iiit-pet"
    images, trimaps = base / "images", base / "annotations" / "trimaps"
    images.mkdir(parents=True)
    trimaps.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    names: list[str] = []
    for breed, cls, species, breed_id in PETS_BREEDS:
        for k in range(per_breed_trainval + per_breed_test):
            name = f"{breed}_{100 + k}"
            names.append(name)
            split = "trainval" if k < per_breed_trainval else "test"
            lines[split].append(f"{name} {cls} {species} {breed_id}")
            h, w = int(rng.integers(28, 40)), int(rng.integers(28, 40))
            img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(images / f"{name}.jpg", quality=90)
            Image.fromarray(trimap(h, w, rng)).save(trimaps / f"{name}.png")
    for split, ls in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(ls) + "\n")
    odd = {
        "corrupt": names[1],
        "gray": names[2],
        "cmyk": names[3],
        "rgba_png": names[4],
        "no_trimap": names[7],
        "bad_size": names[8],
    }
    data = (images / f"{odd['corrupt']}.jpg").read_bytes()
    (images / f"{odd['corrupt']}.jpg").write_bytes(data[: len(data) // 2])  # truncated
    for key, mode in (("gray", "L"), ("cmyk", "CMYK")):
        p = images / f"{odd[key]}.jpg"
        Image.open(p).convert(mode).save(p, format="JPEG")
    p = images / f"{odd['rgba_png']}.jpg"
    Image.open(p).convert("RGBA").save(p, format="PNG")
    (trimaps / f"{odd['no_trimap']}.png").unlink()
    p = trimaps / f"{odd['bad_size']}.png"
    t = np.array(Image.open(p))
    Image.fromarray(t[:-2]).save(p)
    # also torchvision's archive has xmls/ and list.txt; not needed by OxfordIIITPet
    n_trainval = per_breed_trainval * len(PETS_BREEDS)
    n_test = per_breed_test * len(PETS_BREEDS)
    return {"names": names, "odd": odd, "trainval": n_trainval, "test": n_test, "root": root}


FOLDER_CLASSES = {
    "names": ["background", "cat", "dog"],
    "palette": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
    "ignore_index": 255,
    "ignore_color": [255, 255, 255],
}


def make_folder(root: Path, n: int = 6, classes_format: str = "json") -> dict:
    """An images/ + labels/ folder with colour labels, plus oddities: an image without a label,
    a label with an unknown colour, an orphan label and a palette-mode image."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    pal = np.array(FOLDER_CLASSES["palette"] + [FOLDER_CLASSES["ignore_color"]], np.uint8)
    index_maps = {}
    for i in range(n):
        h, w = 24, 32
        idx = rng.integers(0, 4, size=(h, w))  # 3 = ignore colour
        index_maps[f"img{i}"] = np.where(idx == 3, 255, idx)
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        Image.fromarray(pal[idx]).save(root / "labels" / f"img{i}.png")
    Image.fromarray(rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)).convert("P").save(
        root / "images" / "palette_img.png"
    )
    Image.fromarray(pal[np.zeros((24, 32), int)]).save(root / "labels" / "palette_img.png")
    index_maps["palette_img"] = np.zeros((24, 32), int)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / "nolabel.jpg")
    bad = pal[np.zeros((24, 32), int)].copy()
    bad[0, 0] = (10, 20, 30)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / "badcolour.png")
    Image.fromarray(bad).save(root / "labels" / "badcolour.png")
    Image.fromarray(pal[np.zeros((24, 32), int)]).save(root / "labels" / "orphan.png")
    if classes_format == "json":
        (root / "classes.json").write_text(json.dumps(FOLDER_CLASSES))
    elif classes_format == "yaml":
        import yaml

        (root / "classes.yaml").write_text(yaml.safe_dump(FOLDER_CLASSES))
    return {"index_maps": index_maps, "kept": n + 1}
