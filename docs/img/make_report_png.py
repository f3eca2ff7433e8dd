"""Make docs/img/report.png, a screenshot of ``hmc predict --report`` in headless Chromium, and
docs/img/explain.png, the picture ``hmc explain`` writes for one image.

Synthetic photos (no dataset ships with the docs): a bright patch on the left or right half
(level 1) in red or green (level 2); a tiny HRN model (timm ``test_efficientnet``) trained for
a few steps, then ``hmc predict --labels --report --report_cams`` and a Chromium screenshot.

    python docs/img/make_report_png.py            # needs Debian's chromium
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmc.cli import explain_main, predict_main
from hmc.data import HierarchyFolder
from hmc.data.transforms import build_transforms
from hmc.training import HMCModule

OUT = Path(__file__).resolve().parent / "report.png"
EXPLAIN_OUT = OUT.with_name("explain.png")
SIZE = 64


def photo(side: str, colour: str, rng: np.random.Generator) -> Image.Image:
    """The patch's centre is on its side, sometimes close to the middle (the hard cases)."""
    a = (rng.random((SIZE, SIZE, 3)) * 30).astype(np.uint8)
    x0 = int(rng.integers(0, SIZE // 2 - 6)) + (SIZE // 2 - 11 if side == "right" else -5)
    x0 = max(0, min(x0, SIZE - 22))
    y0 = 8 + int(rng.integers(0, 20))
    a[y0 : y0 + 28, x0 : x0 + 22, ("red", "green").index(colour)] = 230
    return Image.fromarray(a)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hmc-report-png-"))
    rng = np.random.default_rng(0)
    for split, n in (("patches", 16), ("show", 3)):
        for side in ("left", "right"):
            for colour in ("red", "green"):
                folder = work / split / side / colour
                folder.mkdir(parents=True)
                for i in range(n):
                    photo(side, colour, rng).save(folder / f"{side}_{colour}_{i}.png")
    transform = build_transforms("small", train=False, image_size=SIZE)
    train = HierarchyFolder(work / "patches", level_names=["side", "colour"], transform=transform)
    h = train.hierarchy
    torch.manual_seed(0)
    module = HMCModule(
        h,
        backbone="test_efficientnet",
        head_kwargs={"hidden": 32},
        decoder="marginal",
        scores="logits",
    )
    model, loss = module.model, module.loss_fn
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    model.train()
    for _ in range(8):  # epochs: enough to be mostly right
        for x, y in loader:
            out = model(x)
            opt.zero_grad()
            loss(out.node_scores, y, out.leaf_logits).backward()
            opt.step()
    # The checkpoint `hmc fit` writes (HMCModule.on_save_checkpoint), with the eval transform.
    state = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(state)
    state["hmc"]["transform"] = {"preset": "small", "image_size": SIZE}
    ckpt = work / "model.ckpt"
    torch.save(state, ckpt)
    show = work / "show"
    lines = ["path,label"] + [
        f"{p.relative_to(show)},{p.parent.relative_to(show)}" for p in sorted(show.rglob("*.png"))
    ]
    (show / "labels.csv").write_text("\n".join(lines) + "\n")
    report = work / "report.html"
    argv = ["--ckpt_path", str(ckpt), "--labels", str(show / "labels.csv"), "--report",
            str(report), "--report_cams", "true", "--output", str(work / "p.csv")]  # fmt: skip
    if predict_main(argv):
        sys.exit("hmc predict failed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs chromium (apt-get install chromium)")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={work / 'profile'}",
            "--window-size=1000,1010",
            f"--screenshot={OUT}",
            report.as_uri(),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    # 80 % size, palette PNG: small enough for the README, text still legible.
    shot = Image.open(OUT).convert("RGB")
    shot = shot.resize((shot.width * 4 // 5, shot.height * 4 // 5), Image.Resampling.LANCZOS)
    shot.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(OUT, optimize=True)
    one = show / "right" / "green" / "right_green_0.png"
    if explain_main(["--ckpt_path", str(ckpt), str(one), "--output", str(work / "explain")]):
        sys.exit("hmc explain failed")
    picture = Image.open(work / "explain" / one.name).convert("RGB")
    picture.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(EXPLAIN_OUT, optimize=True)
    for f in (OUT, EXPLAIN_OUT):
        print(f"{f} ({f.stat().st_size // 1024} kB)")
    print(f"work files in {work}")


if __name__ == "__main__":
    main()
