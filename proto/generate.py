"""Regenerate the Python gRPC stubs in machinery/api from proto/.

The stubs are committed so that an installed kubelite needs no protobuf
compiler; tests/test_proto_fresh.py fails when they drift from the .proto
files. Run `python proto/generate.py` after editing a .proto file.
"""

import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "kubelite" / "api" / "v1"
OUT_DIR = ROOT / "machinery" / "api"


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.name) for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ]
    if protoc.main(args + protos) != 0:
        raise SystemExit(f"protoc failed on {protos}")
    # protoc writes absolute imports between generated modules; the stubs live
    # inside a package, so make them relative.
    for path in out_dir.glob("*_pb2_grpc.py"):
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", path.read_text(), flags=re.M)
        path.write_text(text)


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(pathlib.Path(tmp))
            stale = [
                p.name
                for p in [*pathlib.Path(tmp).glob("*.py"), *pathlib.Path(tmp).glob("*.pyi")]
                if not (OUT_DIR / p.name).exists()
                or (OUT_DIR / p.name).read_text() != p.read_text()
            ]
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run python proto/generate.py")
            return 1
        return 0
    generate(OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
