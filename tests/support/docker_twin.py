"""The twin inside a real Docker container, without a registry: a tiny local image plus bind mounts.

No image registry is reachable from this machine kind, so the image is a minimal root filesystem made
here (the usr-merge symlinks, /etc/passwd, empty mount points) imported with `docker import`; the
interpreter, the venv and the source tree are bind-mounted read-only at their own paths, so the argv
inside the container is the same `{python} -m twin serve ...` as outside. The tarball is deterministic,
so its content hash names the image and a second test session imports nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

IMAGE_REPOSITORY = "topo-test-rootfs"
REPO_ROOT = Path(__file__).resolve().parents[2]


def docker_unavailable() -> str | None:
    """Why Docker cannot run containers here (the tests skip with it), or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` CLI on PATH (scripts/setup --test installs docker.io and starts dockerd)"
    try:
        done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s (is dockerd wedged?)"
    if done.returncode != 0 or not done.stdout.strip():
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"the Docker daemon does not answer ({reason[0]}); scripts/setup --test starts dockerd as root"
    return None


def _rootfs_tarball() -> bytes:
    """A root filesystem with nothing in it but mount points and the links the host's /usr needs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, *, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, link: str = "",
                content: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.mtime, info.size = kind, mode, link, 0, len(content)
            tar.addfile(info, io.BytesIO(content) if content else None)

        for directory in ("usr", "etc", "root", "proc", "sys", "dev", "run", "var", "work"):
            add(directory)
        add("tmp", mode=0o1777)
        for name in ("bin", "lib", "lib64", "sbin"):
            add(name, kind=tarfile.SYMTYPE, link=f"usr/{name}")
        add("etc/passwd", kind=tarfile.REGTYPE, mode=0o644, content=b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", kind=tarfile.REGTYPE, mode=0o644, content=b"root:x:0:\n")
    return buffer.getvalue()


def twin_image() -> str:
    """The local image's tag, importing it first if this content was never imported (well under a second)."""
    tarball = _rootfs_tarball()
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(tarball).hexdigest()[:16]}"
    present = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=30)
    if present.returncode != 0:
        subprocess.run(["docker", "import", "-", tag], input=tarball, capture_output=True, check=True, timeout=120)
    return tag


def host_mounts() -> tuple[str, ...]:
    """Read-only bind mounts that make this interpreter, its venv and the source tree work inside."""
    paths = {
        "/usr",
        os.path.realpath(sys.base_prefix),  # the interpreter (pyenv's, or /usr)
        os.path.realpath(sys.prefix),  # the venv (a symlink in a worktree points at the shared one)
        str(REPO_ROOT),
    }
    # drop paths inside another mounted path (docker refuses nothing, but a duplicate mount is noise)
    kept = sorted(path for path in paths if not any(path != other and path.startswith(other + "/") for other in paths))
    return tuple(f"{path}:{path}:ro" for path in kept)


def twin_docker_engine(image: str) -> dict[str, object]:
    """The `engine:` keys that put a node's twin into a container of `image` (GPU-less: no --gpus)."""
    return {
        "launcher": "docker",
        "image": image,
        "gpus": None,
        "volumes": list(host_mounts()),
        "twin": [sys.executable, "-m", "twin"],
    }


def twin_container_env() -> dict[str, str]:
    """What the node's env must add so the container imports this source tree (the host's env is not
    inherited: the container sees only its env file)."""
    return {"PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def containers_labelled(cluster_name: str) -> list[str]:
    """Names of every container (running or not) that topo started for `cluster_name`."""
    done = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=topo.cluster={cluster_name}", "--format", "{{.Names}}"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return done.stdout.split()
