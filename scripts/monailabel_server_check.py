# Copyright (c) multi-condos contributors
# Licensed under the Apache License, Version 2.0
"""
End-to-end check of the bundle in a real MONAI Label 0.8.5 server, as a new user would set it up. Run it with the
python of the MONAI Label virtual environment (``scripts/monailabel_env.sh`` builds it):

    .venv-monailabel/bin/python scripts/monailabel_server_check.py
    .venv-monailabel/bin/python scripts/monailabel_server_check.py --model_file models/model.pt
    .venv-monailabel/bin/python scripts/monailabel_server_check.py --config_overrides '{"spacing": [1.0, 1.0, 1.0]}'

Steps, each printed with its result:

1. the ``monaibundle`` sample app: ``monailabel apps --download --name monaibundle --output <tmp>/apps``. This needs
   no network: the monailabel wheel ships its sample apps (``<venv>/monailabel/sample-apps/``) and ``apps
   --download`` copies one from there;
2. the bundle (``configs``, ``bundle``, ``scripts``, ``docs``, ``LICENSE``; ``--model_file`` as ``models/model.pt``
   with its ``model.json`` record when there is one beside it) copied to ``<app>/model/multi_condos_mri_segmentation``
   (MONAI Label guesses the task type from the folder name). Top-level ids of ``--config_overrides`` (and, with
   ``--tiny``, the default without ``--model_file``, tiny sizes for a CPU) are written into the copy's
   ``configs/train.yaml`` and ``configs/inference.yaml`` (each id into the configs that define it): MONAI Label
   passes no other overrides than its own;
3. a studies folder of NIfTI volumes of modality A from ``bundle.demo_data.generate_demo_dataset``: the labeled
   subjects with ``labels/final/<id>.nii.gz``, the others without labels;
4. ``monailabel start_server --app <app> --studies <studies> --conf models multi_condos_mri_segmentation
   --conf zoo_source github --conf sam2 false`` on 127.0.0.1 and a free port (``sam2 false``: otherwise the app
   downloads SAM2 weights at start-up; ``zoo_source github``: the local bundle is used as it is);
5. ``GET /info/``: the model's description, labels and dimension, and the trainers;
6. ``POST /infer/multi_condos_mri_segmentation?image=<id>``: the returned mask's shape and affine against the image;
7. ``POST /train/multi_condos_mri_segmentation`` with ``{"max_epochs": 1, "val_split": ..., "multi_gpu": false,
   "pretrained": true}``, then ``GET /train/`` until the task is done;
8. ``/infer/`` again, with the retrained ``models/model.pt`` (MONAI Label reloads it when its time stamp changes).

Without ``--model_file`` the bundle has no ``models/model.pt``: MONAI Label then offers only the trainer (an
inference task without weights is not registered), so the check trains first, restarts the server (MONAI Label
registers inference tasks at start-up only), and then runs steps 5 to 8 (the training of step 7 is a retraining that
loads the first one's ``model.pt``). The server (and its training subprocess) is always stopped. Exit status 0 when
every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUNDLE_NAME = "multi_condos_mri_segmentation"  # MONAI Label guesses the task type from the folder name
BUNDLE_ITEMS = ("configs", "bundle", "scripts", "docs", "LICENSE")
CONFIGS = ("train.yaml", "inference.yaml")
#: sizes that keep a CPU training to seconds (as tests/test_monailabel.py): 32x32 slices, a small network
TINY = {
    "image_size": 32,
    "features": [8, 8, 16, 16, 32, 8],
    "epoch_length": 2,
    "samples_per_subject": 2,
    "batch_size": 4,
    "val_interval": 1,
}


class CheckError(RuntimeError):
    """A step of the check failed."""


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def monailabel_command() -> list[str]:
    """The ``monailabel`` launcher of this python's environment (as a user runs it), else ``-m monailabel.main``."""
    launcher = Path(sys.executable).parent / "monailabel"
    return [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "monailabel.main"]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MONAILABEL_PYEXE"] = sys.executable  # the launcher runs `python` otherwise
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def get_sample_app(work: Path) -> Path:
    step("1. the monaibundle sample app (offline: the wheel ships its sample apps)")
    cmd = [*monailabel_command(), "apps", "--download", "--name", "monaibundle", "--output", str(work / "apps")]
    say("$ monailabel " + " ".join(cmd[cmd.index("apps") :]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=server_env(), timeout=300)
    for line in (proc.stdout + proc.stderr).strip().splitlines()[-3:]:
        say(line)
    app = work / "apps" / "monaibundle"
    if proc.returncode != 0 or not (app / "main.py").is_file():
        raise CheckError(f"`monailabel apps --download --name monaibundle` failed (exit {proc.returncode})")
    say(f"app: {app} ({', '.join(sorted(p.name for p in app.iterdir()))})")
    return app


def copy_bundle(app: Path, model_file: str | None, overrides: dict[str, Any]) -> Path:
    step(f"2. the bundle copied to <app>/model/{BUNDLE_NAME}")
    import yaml

    dest = app / "model" / BUNDLE_NAME
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in BUNDLE_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        else:
            shutil.copy2(src, dest / item)
    say(f"copied: {', '.join(BUNDLE_ITEMS)}")
    if model_file:
        src = Path(model_file)
        if not src.is_file():
            raise CheckError(f"--model_file {model_file} does not exist")
        (dest / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / "models" / "model.pt")
        record = src.with_suffix(".json")
        if record.is_file():
            shutil.copy2(record, dest / "models" / "model.json")
        say(f"models/model.pt <- {src}" + (f" (+ {record.name})" if record.is_file() else " (no model.json beside it)"))
    if overrides:
        unused = set(overrides)
        for name in CONFIGS:
            path = dest / "configs" / name
            config = yaml.safe_load(path.read_text())
            changed = {k: v for k, v in overrides.items() if k in config}
            config.update(changed)
            unused -= set(changed)
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            say(f"configs/{name}: {json.dumps(changed)}")
        if unused:
            raise CheckError(f"--config_overrides ids defined in neither {CONFIGS}: {sorted(unused)}")
    return dest


def make_studies(work: Path, num_subjects: int, num_unlabeled: int, shape: tuple[int, ...]) -> tuple[Path, list, list]:
    step("3. a studies folder of demo NIfTI volumes (modality A) and labels/final/")
    from bundle.demo_data import generate_demo_dataset

    demo = work / "demo"
    datalist = json.loads(Path(generate_demo_dataset(demo, num_subjects, num_unlabeled, shape, seed=0)).read_text())
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    labeled, unlabeled = [], []
    for section, ids in (("training", labeled), ("testing", unlabeled)):
        for record in datalist[section]:
            image_id = Path(record["t1"]).name.split("_t1")[0]
            shutil.copy2(demo / record["t1"], studies / f"{image_id}.nii.gz")
            if section == "training":
                shutil.copy2(demo / record["label"], studies / "labels" / "final" / f"{image_id}.nii.gz")
            ids.append(image_id)
    say(f"{studies}: {len(labeled)} labeled {labeled}, {len(unlabeled)} unlabeled {unlabeled}; shape {list(shape)}")
    return studies, labeled, unlabeled


class Server:
    """``monailabel start_server`` in its own process group, its output in ``log``."""

    def __init__(self, app: Path, studies: Path, log: Path, timeout: float) -> None:
        self.app, self.studies, self.log, self.timeout = app, studies, log, timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        conf = ["--conf", "models", BUNDLE_NAME, "--conf", "zoo_source", "github", "--conf", "sam2", "false"]
        cmd = [*monailabel_command(), "start_server", "--app", str(self.app), "--studies", str(self.studies), *conf]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        say("$ monailabel " + " ".join(cmd[cmd.index("start_server") :]))
        out = open(self.log, "a")  # closed once the process has it
        started = time.time()
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env(), cwd=self.app, start_new_session=True
        )
        out.close()
        import requests

        while time.time() - started < self.timeout:
            if self.proc.poll() is not None:
                raise CheckError(f"the server exited with status {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=10).status_code == 200:
                    say(f"server up at {self.url} after {time.time() - started:.0f} s (pid {self.proc.pid})")
                    return
            except requests.RequestException:
                pass
            time.sleep(2)
        raise CheckError(f"the server did not answer /info/ within {self.timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)  # the server's own process group (its training subprocess included)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        say(f"server stopped (exit {self.proc.returncode})")
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join("   | " + line for line in text[-lines:])


def get_info(server: Server) -> dict:
    import requests

    r = requests.get(f"{server.url}/info/", timeout=60)
    say(f"GET /info/ -> {r.status_code}")
    if r.status_code != 200:
        raise CheckError(f"/info/ answered {r.status_code}: {r.text[:500]}")
    info = r.json()
    model = info.get("models", {}).get(BUNDLE_NAME)
    trainer = info.get("trainers", {}).get(BUNDLE_NAME)
    if model:
        say(
            f"model {BUNDLE_NAME}: type {model.get('type')}, dimension {model.get('dimension')}, "
            f"labels {model.get('labels')}, version {model.get('version')}"
        )
        say(f"  description: {model.get('description')}")
        say(f"  model_filename: {model.get('config', {}).get('model_filename')}")
    else:
        say(f"model {BUNDLE_NAME}: not offered for inference (no models/model.pt at start-up)")
    say(
        f"trainer {BUNDLE_NAME}: {'yes' if trainer else 'no'}; app labels {info.get('labels')}; "
        f"datastore {json.dumps({k: info.get('datastore', {}).get(k) for k in ('total', 'completed')})}"
    )
    return info


def infer(server: Server, studies: Path, image_id: str, out: Path, device: str | None) -> dict:
    import nibabel as nib
    import numpy as np
    import requests
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    params = {"device": device} if device else {}
    url = f"{server.url}/infer/{BUNDLE_NAME}"
    started = time.time()
    r = requests.post(url, params={"image": image_id}, data={"params": json.dumps(params)}, timeout=900)
    say(
        f"POST /infer/{BUNDLE_NAME}?image={image_id} {json.dumps(params)} -> {r.status_code} "
        f"in {time.time() - started:.1f} s"
    )
    if r.status_code != 200:
        raise CheckError(f"/infer/ answered {r.status_code}: {r.text[:1500]}\n{server.tail(30)}")
    result: dict = {}
    for part in MultipartDecoder.from_response(r).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            result = json.loads(part.content)
        elif 'name="image"' in disposition:
            out.write_bytes(part.content)
    if not out.is_file():
        raise CheckError(f"/infer/ returned no mask (params {result})")
    image, mask = nib.load(studies / f"{image_id}.nii.gz"), nib.load(out)
    values = np.unique(np.asanyarray(mask.dataobj)).tolist()
    same_shape = tuple(mask.shape) == tuple(image.shape)
    same_affine = bool(np.allclose(mask.affine, image.affine, atol=1e-4))
    fraction = float((np.asanyarray(mask.dataobj) > 0).mean())
    say(
        f"mask shape {tuple(mask.shape)} vs image {tuple(image.shape)}: {'same' if same_shape else 'DIFFERENT'}; "
        f"affine {'same' if same_affine else 'DIFFERENT'}; values {values}; foreground {fraction:.3f}"
    )
    say(f"label_names {result.get('label_names')}; latencies {json.dumps(result.get('latencies', {}))[:200]}")
    if not (same_shape and same_affine):
        raise CheckError(
            f"the mask's geometry differs from the image's:\nmask affine\n{mask.affine}\nimage affine\n{image.affine}"
        )
    if not set(values) <= {0, 1}:
        raise CheckError(f"mask values {values} outside the labels {{0, 1}}")
    return result


def train(server: Server, model_pt: Path, val_split: float, device: str | None, timeout: float) -> None:
    import requests

    before = md5(model_pt) if model_pt.is_file() else None
    restored = f"Restored all variables from {model_pt}"  # ignite's CheckpointLoader, in the training's output
    restored_before = server.log.read_text(errors="replace").count(restored)
    body: dict[str, Any] = {"max_epochs": 1, "val_split": val_split, "multi_gpu": False, "pretrained": True}
    if device:
        body["device"] = device
    r = requests.post(f"{server.url}/train/{BUNDLE_NAME}", json=body, timeout=60)
    say(f"POST /train/{BUNDLE_NAME} {json.dumps(body)} -> {r.status_code}")
    if r.status_code != 200:
        raise CheckError(f"/train/ answered {r.status_code}: {r.text[:1000]}")
    task = r.json()
    started, status = time.time(), task.get("status")
    while time.time() - started < timeout:
        time.sleep(3)
        task = requests.get(f"{server.url}/train/", timeout=60).json()
        status = task.get("status")
        if status not in ("SUBMITTED", "RUNNING"):
            break
    say(
        f"GET /train/ -> task {task.get('id')}: {status} after {time.time() - started:.0f} s "
        f"({task.get('start_ts')} .. {task.get('end_ts')})"
    )
    if status != "DONE":
        details = "\n".join("   | " + str(line) for line in task.get("details", [])[-20:])
        raise CheckError(f"training ended as {status}:\n{details}\n{server.tail(30)}")
    if not model_pt.is_file():
        raise CheckError("training finished without writing models/model.pt")
    after = md5(model_pt)
    say(
        f"models/model.pt: {'written' if before is None else 'rewritten' if after != before else 'UNCHANGED'} "
        f"(md5 {after[:12]}); models/: {sorted(p.name for p in model_pt.parent.iterdir())}"
    )
    loaded = server.log.read_text(errors="replace").count(restored) > restored_before
    say(f"training started from {'models/model.pt (CheckpointLoader)' if loaded else 'no models/model.pt'}")
    if after == before:
        raise CheckError("the retraining did not rewrite models/model.pt")
    if (before is not None) != loaded:
        raise CheckError(
            f"models/model.pt {'existed' if before else 'did not exist'} but was {'' if loaded else 'not '}"
            "loaded by the training"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model_file", help="a model.pt to copy into the bundle (with its model.json beside it)")
    p.add_argument(
        "--config_overrides",
        default="{}",
        help="JSON dict of top-level config ids for the copy's "
        "train.yaml/inference.yaml, e.g. '{\"spacing\": [1.0, 1.0, 1.0]}'",
    )
    p.add_argument(
        "--tiny",
        choices=("auto", "true", "false"),
        default="auto",
        help=f"write the tiny CPU sizes {json.dumps(TINY)} (auto: only without --model_file)",
    )
    p.add_argument("--subjects", type=int, default=6, help="demo subjects (default 6)")
    p.add_argument("--unlabeled", type=int, default=2, help="of which without labels (default 2)")
    p.add_argument("--shape", default="32,32,16", help="demo volume shape (default 32,32,16)")
    p.add_argument("--val_split", type=float, default=0.25, help="the /train/ request's val_split (default 0.25)")
    p.add_argument("--device", default=None, help="device for /infer/ and /train/ (default: MONAI Label's choice)")
    p.add_argument("--start_timeout", type=float, default=600, help="seconds to wait for the server (default 600)")
    p.add_argument("--train_timeout", type=float, default=1800, help="seconds to wait for a training (default 1800)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (app, studies, server log)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import monailabel
    except ImportError as e:
        print(f"monailabel does not import in {sys.executable} ({e}); build its venv: bash scripts/monailabel_env.sh")
        return 1
    overrides = json.loads(args.config_overrides)
    tiny = args.tiny == "true" or (args.tiny == "auto" and not args.model_file)
    overrides = {**(TINY if tiny else {}), **overrides}
    shape = tuple(int(s) for s in args.shape.split(","))
    version = json.loads((ROOT / "configs" / "metadata.json").read_text()).get("version")
    print(f"MONAI Label {monailabel.__version__} ({sys.executable}); bundle {ROOT} (version {version}); tiny: {tiny}")

    work = Path(tempfile.mkdtemp(prefix="monailabel_check_"))
    server: Server | None = None
    failed: str | None = None
    try:
        app = get_sample_app(work)
        bundle_path = copy_bundle(app, args.model_file, overrides)
        model_pt = bundle_path / "models" / "model.pt"
        studies, labeled, unlabeled = make_studies(work, args.subjects, args.unlabeled, shape)
        target = (unlabeled or labeled)[0]
        server = Server(app, studies, work / "server.log", args.start_timeout)

        step("4. start the server")
        server.start()
        step("5. GET /info/")
        info = get_info(server)
        if BUNDLE_NAME not in info.get("models", {}):
            if BUNDLE_NAME not in info.get("trainers", {}):
                raise CheckError(f"{BUNDLE_NAME} is neither a model nor a trainer:\n{server.tail()}")
            step("5a. no models/model.pt: a first training (from scratch), then a server restart")
            train(server, model_pt, args.val_split, args.device, args.train_timeout)
            server.stop()
            server.start()
            step("5b. GET /info/ after the restart")
            info = get_info(server)
            if BUNDLE_NAME not in info.get("models", {}):
                raise CheckError(f"{BUNDLE_NAME} is still not offered for inference:\n{server.tail()}")

        step(f"6. POST /infer/ on {target}")
        infer(server, studies, target, work / "infer_1.nii.gz", args.device)
        step("7. POST /train/ (retraining from models/model.pt), wait for it")
        train(server, model_pt, args.val_split, args.device, args.train_timeout)
        step(f"8. POST /infer/ on {target} with the retrained models/model.pt")
        infer(server, studies, target, work / "infer_2.nii.gz", args.device)
        reloaded = "Reload model from cache" in server.log.read_text(errors="replace")
        say(f"server log: retrained model {'reloaded' if reloaded else 'NOT reloaded'} for inference")
        if not reloaded:
            raise CheckError("the server did not reload the retrained models/model.pt")
    except (CheckError, OSError, ValueError) as e:
        failed = str(e)
    except Exception as e:  # any failure is reported as one
        failed = f"{type(e).__name__}: {e}"
    finally:
        if server is not None:
            step("stop the server")
            server.stop()
        if args.keep:
            print(f"\nkept: {work} (server log: {work / 'server.log'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"\nFAILED: {failed}")
        return 1
    print("\nPASSED: MONAI Label served the bundle: /info/, /infer/, /train/, /infer/ with the retrained model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
