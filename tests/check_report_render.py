#!/usr/bin/env python
"""Render check for reports (not part of pytest): compile the LaTeX table and open the HTML page in a
real headless browser, leaving a PDF, PNGs of it and screenshots of the page for a person to look at.

    .venv/bin/python tests/check_report_render.py [--out DIR]

Builds a sample MLflow store (tests/sample_store.py: an ablation with a failed and a killed trial,
masked modalities, and an Optuna-style tune sweep), makes the reports, then
  - wraps table.tex in a minimal article with booktabs, runs pdflatex, fails on a LaTeX error and
    lists overfull boxes; pdftoppm turns the PDF into PNG;
  - screenshots report.html with Debian's chromium (headless, no network, throwaway profile).
Each step is skipped with a message when its tool is missing (exit 0), so it runs anywhere.
Debian: apt-get install -y chromium texlive-latex-base texlive-latex-recommended poppler-utils
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.environment import apply_defaults  # noqa: E402  (plain constants: nothing heavy is imported)

apply_defaults()   # an entry point of its own: before MLflow is imported

# The table must compile with booktabs alone; graphicx (if loaded) lets a wide table shrink to the line.
WRAPPER = r"""\documentclass[11pt]{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}%s
\begin{document}
\input{%s}
\end{document}
"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def build_reports(out: Path) -> dict[str, dict[str, Path]]:
    from reports.report import make_report
    from tests.sample_store import sample_ablation, sample_tune

    store = out / "store"
    uri = sample_ablation(store, "demo", masked={"text_only": "audio,video"})
    sample_tune(store, "fusion")
    sample_ablation(store, "authors_protocol", select_on="test", stage1_seed_mode="shared", failed=(), killed=())
    # Variant names as ablations/demo.yaml writes them, plus every character LaTeX treats specially.
    odd = {"full": ({}, 0.60), "w/o prompt": ({"stage1.prompt": False}, 0.57),
           "T+A": ({"fusion.modalities": "text,audio"}, 0.58),
           "KD_{a} & 50% #1 ~x^2 $ | <b>": ({"fusion.kd_audio_weight": 0.5}, 0.59)}
    sample_ablation(store, "odd_names", variants=odd, failed=(), killed=())
    paths = {}
    for name, kwargs in (("demo", {"per_class": True}), ("fusion", {}), ("authors_protocol", {}), ("odd_names", {})):
        paths[name] = make_report(name, uri, out / "reports" / name, **kwargs).paths
    return paths


def check_latex(tex: Path, work: Path) -> bool:
    pdflatex = shutil.which("pdflatex")
    if not pdflatex:
        print("SKIP latex: pdflatex not found (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
        return True
    work.mkdir(parents=True, exist_ok=True)
    for packages, suffix in (("", "_booktabs_only"), ("\n\\usepackage{graphicx}", "")):
        doc = work / f"{tex.parent.name}{suffix}.tex"
        doc.write_text(WRAPPER % (packages, tex.resolve().as_posix()), encoding="utf-8")
        t0 = time.monotonic()
        proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=work,
                              capture_output=True, text=True, timeout=120)
        log = (work / doc.with_suffix(".log").name).read_text(encoding="latin-1", errors="replace")
        if proc.returncode != 0:
            print(f"FAIL latex {tex} ({doc.name}): pdflatex exit {proc.returncode}\n" + proc.stdout[-3000:])
            return False
        overfull = re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)
        pdf = doc.with_suffix(".pdf")
        print(f"OK   latex {tex} -> {pdf} ({time.monotonic() - t0:.1f} s)"
              + (f"; overfull boxes: {', '.join(overfull)} pt" if overfull else "; no overfull boxes"))
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "110", str(pdf), str(pdf.with_suffix(""))], check=True, timeout=60)
        pages = sorted(work.glob(f"{pdf.stem}-*.png"))
        print(f"     pdf page images: {', '.join(map(str, pages))}")
    else:
        print("     (pdftoppm not found: no PNG of the PDF; Debian: apt-get install poppler-utils)")
    return True


def check_html(html: Path, png: Path, size: str) -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("SKIP html: chromium not found (Debian: apt-get install chromium)")
        return True
    text = html.read_text(encoding="utf-8")
    # Nothing is loaded from elsewhere; the only links are run ids opening their run in the MLflow UI.
    external = re.findall(r"""src\s*=\s*["'](?!data:)([^"']+)""", text)
    external += [h for h in re.findall(r"""href\s*=\s*["']([^"']+)""", text)
                 if not h.startswith("#") and "/#/experiments/" not in h]
    if external:
        print(f"FAIL html {html}: not self-contained, refers to {external[:5]}")
        return False
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        t0 = time.monotonic()
        proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                               f"--window-size={size}", html.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not png.exists() or png.stat().st_size < 10_000:
        # Chromium's dbus complaints are noise in a container; its own error lines are the useful part.
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line and "dbus" not in line]
        print(f"FAIL html {html}: chromium exit {proc.returncode}\n" + "\n".join(errors[-10:]))
        return False
    print(f"OK   html {html} -> {png} ({png.stat().st_size // 1024} KiB, {time.monotonic() - t0:.1f} s)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="where to leave everything (default: a new temporary directory)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="report-render-"))
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    paths = build_reports(out)
    print(f"reports built in {time.monotonic() - t0:.1f} s under {out}")
    ok = True
    for name, files in paths.items():
        ok &= check_latex(files["tex"], out / "latex")
        ok &= check_html(files["html"], out / "shots" / f"{name}.png", "1200,2000")
        ok &= check_html(files["html"], out / "shots" / f"{name}_full.png", "1200,9000" if name == "fusion" else "1200,5200")
    print("render check:", "passed" if ok else "FAILED", f"(look at the PNGs under {out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
