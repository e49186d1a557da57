"""``python -m dashboard DATA_ROOT [--db FILE] [--host H] [--port P] [--submission CSV] [--infer OVERRIDE]``.

Opens (or creates) the inspections store, imports the root's annotations when the store has none (or with
``--reimport``), imports the root's prediction files and any ``--submission``, composes the infer config
for predictions on demand, then serves the app.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from common.errors import command
from common.inspections import connect
from common.layout import find_root
from dashboard.app import Dashboard, create_app
from dashboard.importer import import_root, import_submission, load_csv
from dashboard.predict import OnDemand
from dashboard.upload import MAX_UPLOAD_BYTES


def prepare(args: argparse.Namespace) -> Dashboard:
    """Fill the store as asked and return the dashboard state."""
    data = find_root(args.root)
    db = args.db or Path("outputs") / "dashboard" / f"{data.root.resolve().name}.sqlite"
    with closing(connect(db)) as conn:
        has_truth = conn.execute("SELECT 1 FROM inspections WHERE source IN ('train','test') LIMIT 1").fetchone()
        if args.reimport or not has_truth:
            for source, n in import_root(conn, data).items():
                print(f"imported {source}: {n} rows")
        known = {r[0] for r in conn.execute("SELECT DISTINCT source FROM inspections")}
        for path in [*data.submissions, *args.submission]:
            if f"pred:{path.stem}" in known and path not in args.submission:
                continue
            annotations, dates = load_csv(path)
            print(f"imported pred:{path.stem}: {import_submission(conn, annotations, dates, path.stem)} rows")
    print(f"inspections store: {db}")
    predictor = OnDemand(args.infer)
    predictor.config()  # a bad override stops here, with its message
    board = Dashboard.from_root(
        db, data, predictor=predictor, max_upload_bytes=int(args.max_upload_mb * 2**20), poll_s=args.poll_s
    )
    print(board.model_status()[0])
    return board


@command
def main(argv: list[str] | None = None) -> int:
    """CLI entry: serve the dashboard until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m dashboard", description="Steel defect inspection dashboard")
    parser.add_argument("root", type=Path, help="data root (Kaggle layout or annotations/ + images/)")
    parser.add_argument("--db", type=Path, help="inspections store (default outputs/dashboard/<root name>.sqlite)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8005, help="port (default 8005)")
    parser.add_argument(
        "--submission", type=Path, action="append", default=[], help="submission CSV to load (repeatable)"
    )
    parser.add_argument("--reimport", action="store_true", help="import the root again even if the store has it")
    parser.add_argument(
        "--infer",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="infer.py override for predictions on demand, e.g. checkpoints.segmenter=[runs/seg] "
        "(repeatable; default: infer.py's defaults, the demo's training runs)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20, help="upload size cap (MiB)")
    parser.add_argument("--poll-s", type=float, default=5.0, help="how often the page looks for new inspections (s)")
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (reloader off)")
    args = parser.parse_args(argv)
    if args.poll_s <= 0 or args.max_upload_mb <= 0:
        parser.error("--poll-s and --max-upload-mb must be positive")
    dashboard = prepare(args)
    create_app(dashboard).run(host=args.host, port=args.port, debug=args.debug, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
