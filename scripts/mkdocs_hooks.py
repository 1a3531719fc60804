"""mkdocs hook: publish the figures of ``benchmarks/`` next to the pages that include the
benchmark tables (``docs/speed.md`` includes ``benchmarks/optimizer_speed.md``, whose figure links
are relative to ``benchmarks/``)."""

from pathlib import Path

from mkdocs.structure.files import File, Files

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def on_files(files: Files, config) -> Files:
    for figure in sorted(BENCHMARKS.glob("*.png")):
        files.append(
            File(figure.name, str(BENCHMARKS), config["site_dir"], config["use_directory_urls"])
        )
    return files
