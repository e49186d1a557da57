"""``python -m dashboard DATA_ROOT [--db FILE] [--host H] [--port P] [--submission CSV] [--predict-cmd T]``.

Opens (or creates) the inspections store, imports the root's annotations when the store has none (or with
``--reimport``), imports the root's prediction files and any ``--submission``, then serves the app.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from common.errors import SteelsegError
from common.inspections import connect
from common.layout import find_root
from dashboard.app import Dashboard, create_app
from dashboard.importer import import_root, import_submission, load_csv
from dashboard.predict import DEFAULT_COMMAND, REPO_ROOT
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
    return Dashboard.from_root(db, data, predict_command=args.predict_cmd, predict_cwd=args.predict_cwd,
                               max_upload_bytes=int(args.max_upload_mb * 2**20))


def main(argv: list[str] | None = None) -> int:
    """CLI entry: serve the dashboard until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m dashboard", description="Steel defect inspection dashboard")
    parser.add_argument("root", type=Path, help="data root (Kaggle layout or annotations/ + images/)")
    parser.add_argument("--db", type=Path, help="inspections store (default outputs/dashboard/<root name>.sqlite)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8005, help="port (default 8005)")
    parser.add_argument("--submission", type=Path, action="append", default=[], help="submission CSV to load (repeatable)")
    parser.add_argument("--reimport", action="store_true", help="import the root again even if the store has it")
    parser.add_argument("--predict-cmd", default=DEFAULT_COMMAND,
                        help="inference command template; placeholders {python} {images} {out} {submission}")
    parser.add_argument("--predict-cwd", type=Path, default=REPO_ROOT,
                        help="working folder of the inference command (default: the repository root)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20, help="upload size cap (MiB)")
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (reloader off)")
    args = parser.parse_args(argv)
    try:
        dashboard = prepare(args)
    except SteelsegError as exc:  # a user error; anything else is a bug and keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    create_app(dashboard).run(host=args.host, port=args.port, debug=args.debug, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
