"""Builds the demo checkpoint's ranking tables of graded distortions (train_demo_checkpoint.sh, step 0).

The demo checkpoint's ranking tables: graded distortions of real photographs from Debian's wallpaper
packages and of AGIQA-3K's training images, for `dpiqa distill --extra-train/--extra-val`.

Photographs: 36 real photographs (no renders, illustrations or composites; picked by looking at every image
of the packages) from Debian 12's lomiri-wallpapers-16.04 and -20.04 (20.04.0-2), mate-backgrounds
(1.26.0-1) and plasma-workspace-wallpapers (4:5.27.5-2), checked by SHA-256. None of scikit-image's,
scikit-learn's or matplotlib's images (the demo corpus's test photographs) is used. 6 photographs are held
out whole for validation (`val.csv`: the demo's 7 families; `val-extra.csv`: the 12 training-only ones, a
proxy for unseen defects); the other 30 give training views.

Views: each photograph whole (longer side 512, as the demo corpus shows its photographs) and crops of 320 to
512 pixels a side from it rescaled to a longer side of 640 to 1800 (a seeded draw per photograph), 15 % of
them in greyscale (the demo corpus has greyscale photographs; AGIQA-3K none).

Rows: a group is one view and one family: its reference (level 0) and the family at levels 1-5, each
distortion applied at the view's own resolution (`dpiqa.engine.distortions.distort`). Photographs are
unlabelled (empty `mos`: ranked, not regressed). AGIQA-3K training images (the grouped split's training part
for the given seed, never its validation or test part) get one family at one of the five levels, labelled
MOS x (1 - 0.15 x level) (`--agiqa-levels`, default 1), their group the image's name so that they rank against the labelled original.
Families are drawn with weight 2 for the demo's 7 and 1 for the 12 others.

    apt-get install -y --no-install-recommends lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 \\
        mate-backgrounds plasma-workspace-wallpapers
    python recipes/build_ranking_set.py --agiqa ../shared/datasets/agiqa3k --output ../runs/ranking
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dpiqa.engine.distortions import DISTORTIONS, EXTRA_DISTORTIONS, LEVELS, distort  # noqa: E402

PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds", "plasma-workspace-wallpapers")
# (Debian package, file, SHA-256): the real photographs among the packages' images.
PHOTOGRAPHS = [
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
        "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
        "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
    ),
    (
        "lomiri-wallpapers-20.04",
        "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
        "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/Picture_0B_by_freespace.jpg",
        "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
        "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg",
        "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
        "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg",
        "15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/free_by_Peter_Nerlich.jpg",
        "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg",
        "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
        "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/Aqua.jpg",
        "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/Blinds.jpg",
        "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/Dune.jpg",
        "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/FreshFlower.jpg",
        "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/Garden.jpg",
        "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
        "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/LadyBird.jpg",
        "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/RainDrops.jpg",
        "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/Storm.jpg",
        "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/TwoWings.jpg",
        "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/Wood.jpg",
        "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
    ),
    (
        "mate-backgrounds",
        "/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
        "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
        "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
    ),
    (
        "lomiri-wallpapers-16.04",
        "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
        "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/BytheWater/contents/images/2560x1440.jpg",
        "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/ColdRipple/contents/images/2560x1440.jpg",
        "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/DarkestHour/contents/images/2560x1440.jpg",
        "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/EveningGlow/contents/images/2560x1440.jpg",
        "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/FallenLeaf/contents/images/2560x1440.jpg",
        "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/Kite/contents/images/2560x1440.jpg",
        "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/OneStandsOut/contents/images/2560x1440.jpg",
        "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/Path/contents/images/2560x1440.jpg",
        "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/Volna/contents/images/5120x2880.jpg",
        "abc30b4fc6f6a83b6156e6b59ac283c067de40af820aafac8ac7c4fd83a9607c",
    ),
    (
        "plasma-workspace-wallpapers",
        "/usr/share/wallpapers/summer_1am/contents/images/2560x1440.jpg",
        "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8",
    ),
]
VALIDATION = (
    "Kleiber_by_Lukas_Baubkus",
    "Storm",
    "picosdeeuropa_by_Aitzol_Berasategi",
    "Path",
    "friends_by_Aitzol_Berasategi",
    "EveningGlow",
)
DROP_PER_LEVEL = 0.15  # AGIQA-3K copies: MOS x (1 - 0.15 x level), engine.training.data's pseudo-label
MAX_SIDE = 512


def photo_name(path: str) -> str:
    p = Path(path)
    return p.parts[p.parts.index("wallpapers") + 1] if "/wallpapers/" in path else p.stem


def rng_for(*parts: object) -> np.random.Generator:
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256("#".join(map(str, parts)).encode()).digest()[:8], "little")
    )


def views(img: Image.Image, name: str, crops: int) -> list[tuple[str, Image.Image]]:
    """The photograph whole (longer side 512) and `crops` seeded crops of it at other scales."""
    rng = rng_for("views", name)
    whole = img.copy()
    whole.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    out = [(f"{name}_v0", whole)]
    for k in range(1, crops + 1):
        longer = int(rng.integers(640, 1801))
        scale = min(1.0, longer / max(img.size))
        big = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        w, h = int(rng.integers(320, 513)), int(rng.integers(320, 513))
        w, h = min(w, big.width), min(h, big.height)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        out.append((f"{name}_v{k}", big.crop((x, y, x + w, y + h))))
    return [(n, v.convert("L").convert("RGB") if rng_for("grey", n).random() < 0.15 else v) for n, v in out]


def pick_families(rng: np.random.Generator, k: int) -> list[str]:
    kinds = [*DISTORTIONS, *EXTRA_DISTORTIONS]
    weights = np.asarray([2.0 if kind in DISTORTIONS else 1.0 for kind in kinds])
    return list(rng.choice(kinds, size=k, replace=False, p=weights / weights.sum()))


def save(make, path: Path) -> None:  # () -> array or image, called only if `path` is missing
    if not path.exists():
        pixels = make()
        tmp = path.with_suffix(".partial.png")
        (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(tmp, compress_level=1)
        tmp.rename(path)


def photo_rows(job: tuple) -> list[list]:
    """The rows (and images) of one photograph: `families` per view (or the given ones), all 5 levels."""
    path, out, crops, families, k = job
    name = photo_name(path)
    rows = []
    for view, img in views(Image.open(path).convert("RGB"), name, crops):
        ref = out / "images" / f"{view}.png"
        save(lambda img=img: img, ref)
        kinds = families or pick_families(rng_for("families", view), k)
        for kind in kinds:
            group = f"{view}/{kind}"
            rows.append([f"images/{ref.name}", "", f"{group}/0", view, kind, 0])
            for level in LEVELS:
                file = out / "images" / f"{view}__{kind}-{level}.png"
                save(
                    lambda img=img, kind=kind, level=level, view=view: distort(
                        img, kind, level, seed=int(rng_for(view, kind, level).integers(2**31))
                    ),
                    file,
                )
                rows.append([f"images/{file.name}", "", f"{group}/{level}", view, kind, level])
    return rows


def agiqa_rows(job: tuple) -> list[list]:
    """One AGIQA-3K training image: one family at `levels` of the five levels, labelled MOS x (1 - 0.15 x level)."""
    path, name, mos, out, n = job
    rng = rng_for("agiqa", name)
    kind = pick_families(rng, 1)[0]
    levels = sorted(int(x) for x in rng.choice(LEVELS, size=n, replace=False))
    img = Image.open(path).convert("RGB")
    rows = []
    for level in levels:
        file = out / "images" / f"agiqa__{Path(name).stem}__{kind}-{level}.png"
        save(lambda level=level: distort(img, kind, level, seed=int(rng_for(name, kind, level).integers(2**31))), file)
        rows.append(
            [
                f"images/{file.name}",
                f"{mos * (1 - DROP_PER_LEVEL * level):.6f}",
                f"{name}#{kind}-{level}",
                name,
                kind,
                level,
            ]
        )
    return rows


def write(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mos", "name", "group", "family", "level"])
        w.writerows(rows)
    print(f"{path}: {len(rows)} rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agiqa", required=True, help="the AGIQA-3K folder (data.csv + images/)")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the grouped split whose training part is used (default 0)")
    ap.add_argument("--crops", type=int, default=7, help="crops per training photograph (default 7)")
    ap.add_argument("--families", type=int, default=2, help="families per training view (default 2)")
    ap.add_argument("--agiqa-levels", type=int, default=1, help="levels per AGIQA-3K training image (default 1)")
    ap.add_argument("--val-crops", type=int, default=2, help="crops per validation photograph (default 2)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from dpiqa.engine.datasets import load_dataset
    from dpiqa.engine.splits import make_split

    bad = []
    for package, path, sha in PHOTOGRAPHS:
        if not Path(path).is_file():
            bad.append(f"{path} missing (apt-get install {package})")
        elif hashlib.sha256(Path(path).read_bytes()).hexdigest() != sha:
            bad.append(f"{path}: SHA-256 differs from the recorded one (another {package} version?)")
    if bad:
        raise SystemExit("\n".join(bad))
    (args.output / "images").mkdir(parents=True, exist_ok=True)
    val = [p for _, p, _ in PHOTOGRAPHS if photo_name(p) in VALIDATION]
    train = [p for _, p, _ in PHOTOGRAPHS if photo_name(p) not in VALIDATION]
    assert len(val) == len(VALIDATION), val
    labeled = load_dataset("agiqa3k", args.agiqa)
    split = make_split(labeled.names, args.seed, (0.7, 0.1, 0.2), groups=labeled.groups)
    with ProcessPoolExecutor(args.workers) as pool:
        write(
            args.output / "val.csv",
            [
                r
                for rows in pool.map(photo_rows, [(p, args.output, args.val_crops, list(DISTORTIONS), 0) for p in val])
                for r in rows
            ],
        )
        write(
            args.output / "val-extra.csv",
            [
                r
                for rows in pool.map(
                    photo_rows, [(p, args.output, args.val_crops, list(EXTRA_DISTORTIONS), 0) for p in val]
                )
                for r in rows
            ],
        )
        photos = [
            r
            for rows in pool.map(photo_rows, [(p, args.output, args.crops, None, args.families) for p in train])
            for r in rows
        ]
        agiqa = [
            r
            for rows in pool.map(
                agiqa_rows,
                [
                    (labeled[int(i)].path, labeled[int(i)].name, labeled[int(i)].mos, args.output, args.agiqa_levels)
                    for i in split.train
                ],
                chunksize=16,
            )
            for r in rows
        ]
    write(args.output / "train.csv", photos + agiqa)
    manifest = {
        "photographs": [
            {"package": pk, "path": p, "sha256": s, "validation": photo_name(p) in VALIDATION}
            for pk, p, s in PHOTOGRAPHS
        ],
        "agiqa3k_split": {"seed": args.seed, "grouped": True, "train_images": len(split.train)},
        "options": {k: v for k, v in vars(args).items() if k not in ("agiqa", "output")},
    }
    (args.output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
