"""Build the facepipe images offline, tag them by content, push them and write the images lock.

    python -m images.build --registry REGISTRY [--no-push] [--lock PATH] [--image NAME ...]

For each image: resolve its requirement set against requirements.lock, fetch those wheels (and the
project's own wheel) on the host into a build context, hash the context and the base image into an
immutable content tag, `docker build --network none` (pip installs with --no-index), push, check
that the registry serves the pushed digest, and record `image -> digest` in images/images.lock.json,
which `make compile` reads to pin the pipeline's images. An image whose content tag the registry
already holds is neither built nor pushed again.

Credentials come from the environment only: REGISTRY_USERNAME/REGISTRY_PASSWORD, or for SWR
SWR_USERNAME/SWR_PASSWORD, or HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (SWR's login key is derived
from them). `docker login` runs with a temporary DOCKER_CONFIG, so nothing is left on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from images.base import BASE_IMAGE, BaseImageError, ensure_base

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
DEFAULT_LOCK = HERE / "images.lock.json"
# CUDA torch from PyPI pulls its CUDA runtime as wheels (nvidia-*, triton) that the CPU development
# environment, and so requirements.lock, never has: their pins live here, read for TORCH_VARIANT=cuda.
CUDA_LOCK = HERE / "requirements-cuda.lock"
CACHE = PROJECT / ".cache" / "images"
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
# Wheel zip timestamps follow this, so rebuilding an unchanged project gives the same wheel.
SOURCE_DATE_EPOCH = "1700000000"


class ImageBuildError(RuntimeError):
    """A build, push or verification step failed; the message says which and why."""


@dataclass
class ImageSpec:
    name: str
    requirements_in: Path
    torch: bool = False


# The first image's requirement set is the shared /opt/venv layer of every image; each other image
# adds the rest of its own closure in /opt/extra.
SHARED = "facepipe-data"
IMAGES = {
    "facepipe-data": ImageSpec("facepipe-data", HERE / "facepipe-data.in"),
    "facepipe-train": ImageSpec("facepipe-train", HERE / "facepipe-train.in", torch=True),
}


@dataclass
class Outcome:
    name: str
    tag: str
    digest: str = ""
    built: bool = False
    pushed: bool = False
    seconds: dict = field(default_factory=dict)
    size: int = 0


# ---------------------------------------------------------------- requirements and wheels

def read_lock(path: Path) -> dict[str, str]:
    """requirements.lock as {normalized name: version}."""
    pins = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise ImageBuildError(f"{path}: line {n}: expected 'name==version', got {raw!r}")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def variant_pins(variant: str, pins: dict[str, str], cuda_lock: Path = CUDA_LOCK) -> dict[str, str]:
    """requirements.lock's pins plus, for the CUDA variant, those of the CUDA runtime wheels."""
    if variant != "cuda" or not cuda_lock.exists():
        return pins
    extra = read_lock(cuda_lock)
    clash = sorted(n for n in extra if n in pins and pins[n] != extra[n])
    if clash:
        raise ImageBuildError(f"{cuda_lock}: pins {', '.join(f'{n}=={extra[n]}' for n in clash)}, which "
                              f"requirements.lock pins otherwise; keep one version of each package")
    return {**pins, **extra}


def torch_spec(variant: str, lock: dict[str, str], override: str | None) -> str:
    """The torch requirement for a variant: CPU is the '+cpu' build of the locked version, CUDA the
    default Linux build on PyPI (CUDA-enabled) of the same version, asked for with `===`: under
    PEP 440 `torch==2.13.0` also matches `2.13.0+cpu` (and pip prefers it where a find-links folder
    holds it, as on the development machines), which would put CPU torch into the CUDA image."""
    if override:
        return override
    version = lock.get("torch")
    if not version:
        raise ImageBuildError("requirements.lock pins no torch version (needed for facepipe-train)")
    base = version.split("+", 1)[0]
    return f"torch=={base}+cpu" if variant == "cpu" else f"torch==={base}"


def pip(args: list[str], what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed:\n{proc.stderr[-4000:]}")
    return proc


def resolve(spec: ImageSpec, lock_path: Path, lock: dict[str, str], torch_req: str | None,
            work: Path) -> dict[str, str]:
    """The image's full requirement closure {name: version}, every version taken from the lock.

    Resolving takes pip tens of seconds; the answer depends only on the lock, the .in files and the
    torch spec, so it is kept under a key made of those.
    """
    key_src = [lock_path.read_bytes(), (torch_req or "").encode(),
               CUDA_LOCK.read_bytes() if CUDA_LOCK.exists() else b""]
    for f in sorted(HERE.glob("*.in")):
        key_src.append(f.read_bytes())
    key = hashlib.sha256(b"\0".join(key_src)).hexdigest()[:16]
    cached = work / f"{spec.name}.closure.{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    scratch = Path(tempfile.mkdtemp(prefix="resolve-", dir=work))
    constraints = scratch / "constraints.txt"
    # torch is pinned by the variant's spec instead (its local version label differs per variant).
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(lock.items()) if n != "torch"))
    report = scratch / f"{spec.name}.report.json"
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "-c", str(constraints), "-r", str(spec.requirements_in)]
    if torch_req:
        args.append(torch_req)
    try:
        pip(args, f"resolving {spec.name}'s requirements")
        closure = {}
        for item in json.loads(report.read_text())["install"]:
            closure[normalize(item["metadata"]["name"])] = item["metadata"]["version"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    unpinned = sorted(n for n in closure if n not in lock)
    if unpinned:
        raise ImageBuildError(f"{spec.name} needs packages that {lock_path} does not pin: "
                              f"{', '.join(f'{n}=={closure[n]}' for n in unpinned)}; add them to the lock "
                              f"(CUDA torch's runtime wheels, nvidia-* and triton, to {CUDA_LOCK.name})")
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(closure, indent=1, sort_keys=True))
    os.replace(tmp, cached)
    return closure


def pin_line(name: str, version: str) -> str:
    """The requirement that fetches exactly this wheel: torch without a local label by `===`, so a
    `+cpu` build on the find-links path does not stand in for the CUDA one (torch_spec)."""
    return f"{name}==={version}" if name == "torch" and "+" not in version else f"{name}=={version}"


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def fetch_wheels(closure: dict[str, str], cache: Path, work: Path) -> dict[str, Path]:
    """One wheel per pinned requirement in `cache` (sdists are built into wheels on the host)."""
    cache.mkdir(parents=True, exist_ok=True)
    have = {wheel_name_version(p): p for p in cache.glob("*.whl")}
    missing = {n: v for n, v in closure.items() if (n, v) not in have}
    if missing:
        reqs = work / "missing.txt"
        reqs.write_text("".join(pin_line(n, v) + "\n" for n, v in sorted(missing.items())))
        fetched = work / "fetched"
        pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", str(fetched), "-r", str(reqs)],
            f"fetching wheels for {', '.join(sorted(missing))}")
        for w in fetched.glob("*.whl"):  # moved in whole, so a concurrent build never sees half a wheel
            os.replace(w, cache / w.name)
        have = {wheel_name_version(p): p for p in cache.glob("*.whl")}
    out = {}
    for n, v in closure.items():
        if (n, v) not in have:
            raise ImageBuildError(f"no wheel for {n}=={v} in {cache} after pip wheel")
        out[n] = have[(n, v)]
    return out


def build_project_wheel(out_dir: Path, project: Path = PROJECT) -> Path:
    """The facepipe wheel, built from a clean copy of pyproject.toml + src/ (no caches, no egg-info)."""
    src = out_dir / "src-copy"
    shutil.rmtree(src, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(project / "src", src / "src", ignore=ignore)
    shutil.copy2(project / "pyproject.toml", src / "pyproject.toml")
    for f in ("README.md", "LICENSE"):
        if (project / f).exists():
            shutil.copy2(project / f, src / f)
    dist = out_dir / "project"
    shutil.rmtree(dist, ignore_errors=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(dist), str(src)],
        "building the facepipe wheel", env=env)
    shutil.rmtree(src, ignore_errors=True)
    wheels = list(dist.glob("facepipe-*.whl"))
    if len(wheels) != 1:
        raise ImageBuildError(f"expected one facepipe wheel in {dist}, found {[w.name for w in wheels]}")
    return wheels[0]


# ---------------------------------------------------------------- context and content tag

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def wheel_content_hash(path: Path) -> str:
    """Hash of a wheel's member names and bytes: independent of zip timestamps and compression."""
    h = hashlib.sha256()
    with zipfile.ZipFile(path) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            h.update(info.filename.encode() + b"\0" + hashlib.sha256(z.read(info)).digest())
    return h.hexdigest()


def _add_wheels(ctx: Path, folder: str, reqs: str, closure: dict[str, str], wheels: dict[str, Path]) -> None:
    (ctx / folder).mkdir(parents=True)
    lines = []
    for n in sorted(closure):
        w = wheels[n]
        try:
            os.link(w, ctx / folder / w.name)
        except OSError:
            shutil.copy2(w, ctx / folder / w.name)
        lines.append(f"{n}=={closure[n]} --hash=sha256:{sha256_file(w)}\n")
    (ctx / reqs).write_text("".join(lines))


def assemble_context(ctx: Path, shared: dict[str, str], extra: dict[str, str], wheels: dict[str, Path],
                     project_wheel: Path) -> None:
    """Dockerfile, .dockerignore, requirements.txt + wheels/ (the shared set), requirements-extra.txt +
    wheels-extra/ (this image's own), project/ (the facepipe wheel). Pins carry sha256 hashes."""
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    shutil.copy2(HERE / "Dockerfile", ctx / "Dockerfile")
    shutil.copy2(HERE / ".dockerignore", ctx / ".dockerignore")
    _add_wheels(ctx, "wheels", "requirements.txt", shared, wheels)
    _add_wheels(ctx, "wheels-extra", "requirements-extra.txt", extra, wheels)
    (ctx / "project").mkdir()
    shutil.copy2(project_wheel, ctx / "project" / project_wheel.name)


def content_tag(ctx: Path, base_id: str, build_args: dict[str, str]) -> str:
    """sha256 over the build context, the base image and the build args.

    wheels/ is covered by requirements.txt, which carries each wheel's sha256 (and pip refuses a
    wheel that does not match); the project wheel is hashed by its members, not its zip bytes.
    """
    h = hashlib.sha256()
    h.update(f"base {base_id}\n".encode())
    for k in sorted(build_args):
        h.update(f"arg {k}={build_args[k]}\n".encode())
    for p in sorted(ctx.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(ctx).as_posix()
        if rel.startswith("wheels/"):
            digest = "listed"
        elif p.suffix == ".whl":
            digest = wheel_content_hash(p)
        else:
            digest = sha256_file(p)
        h.update(f"file {rel} {digest}\n".encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------- registry

def split_registry(registry: str) -> tuple[str, str]:
    """'host[:port]/namespace' -> (host, namespace)."""
    registry = registry.strip().rstrip("/")
    if "://" in registry:
        raise ImageBuildError(f"--registry takes HOST[:PORT]/NAMESPACE without a scheme, got {registry!r}")
    host, _, namespace = registry.partition("/")
    if "." not in host and ":" not in host and host != "localhost":
        raise ImageBuildError(f"--registry must start with a registry host (e.g. swr.cn-north-4."
                              f"myhuaweicloud.com/ORG or 127.0.0.1:5000/ORG), got {registry!r}")
    return host, namespace


def is_local(host: str) -> bool:
    h = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return h == "localhost" or h.startswith("127.") or h == "[::1]"


def credentials(host: str) -> tuple[str, str] | None:
    """Registry credentials from the environment (never from files)."""
    env = os.environ
    if env.get("REGISTRY_USERNAME") and env.get("REGISTRY_PASSWORD"):
        return env["REGISTRY_USERNAME"], env["REGISTRY_PASSWORD"]
    m = re.fullmatch(r"swr\.([a-z0-9-]+)\.myhuaweicloud\.com(:\d+)?", host)
    if m:
        if env.get("SWR_USERNAME") and env.get("SWR_PASSWORD"):
            return env["SWR_USERNAME"], env["SWR_PASSWORD"]
        ak, sk = env.get("HUAWEICLOUD_SDK_AK"), env.get("HUAWEICLOUD_SDK_SK")
        if ak and sk:
            # SWR's long-term login: user REGION@AK, password hex(HMAC-SHA256(key=SK, msg=AK)).
            return f"{m.group(1)}@{ak}", hmac.new(sk.encode(), ak.encode(), hashlib.sha256).hexdigest()
    return None


class Registry:
    """Just enough of the registry HTTP API v2 to read a tag's manifest digest (with token auth)."""

    def __init__(self, host: str, creds: tuple[str, str] | None):
        import requests  # host-side only; the images do not need it for this

        self.requests = requests
        self.host, self.creds = host, creds
        self.base = f"{'http' if is_local(host) else 'https'}://{host}/v2"
        self.tokens: dict[str, str] = {}

    def _token(self, challenge: str) -> str | None:
        m = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if not challenge.lower().startswith("bearer") or "realm" not in m:
            return None
        params = {k: v for k, v in m.items() if k in ("service", "scope")}
        r = self.requests.get(m["realm"], params=params, auth=self.creds, timeout=30)
        if r.status_code != 200:
            return None
        body = r.json()
        return body.get("token") or body.get("access_token")

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        """The digest the registry serves for repo:ref, or None when it has no such tag."""
        url = f"{self.base}/{repo}/manifests/{ref}"
        headers = {"Accept": MANIFEST_TYPES}
        if repo in self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[repo]}"
        try:
            r = self.requests.head(url, headers=headers, auth=None if repo in self.tokens else self.creds,
                                   timeout=30)
            if r.status_code == 401 and (token := self._token(r.headers.get("WWW-Authenticate", ""))):
                self.tokens[repo] = token
                headers["Authorization"] = f"Bearer {token}"
                r = self.requests.head(url, headers=headers, timeout=30)
        except self.requests.RequestException as exc:
            raise ImageBuildError(f"registry {self.host} unreachable: {exc}") from None
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ImageBuildError(f"registry {self.host}: HEAD {repo}:{ref} answered {r.status_code} "
                                  "(credentials missing or wrong? see images/README.md)")
        digest = r.headers.get("Docker-Content-Digest")
        if not digest:
            raise ImageBuildError(f"registry {self.host} sent no Docker-Content-Digest for {repo}:{ref}")
        return digest


# ---------------------------------------------------------------- docker

def docker(args: list[str], what: str, env: dict, stream: str | None = None, stdin: str | None = None) -> str:
    """Run the docker CLI; its exit code is the verdict. With `stream`, echo lines prefixed by it."""
    if stream is None:
        proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, input=stdin)
        if proc.returncode != 0:
            raise ImageBuildError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
        return proc.stdout
    lines = []
    with subprocess.Popen(["docker", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            print(f"[{stream}] {line.rstrip()}", flush=True)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed ({proc.returncode}):\n{''.join(lines[-30:])}")
    return "".join(lines)


def docker_login(host: str, creds: tuple[str, str], env: dict) -> None:
    docker(["login", "--username", creds[0], "--password-stdin", host], f"docker login {host}", env,
           stdin=creds[1])


def local_image_exists(ref: str, env: dict) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], env=env, capture_output=True).returncode == 0


# ---------------------------------------------------------------- lock

def read_images_lock(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ImageBuildError(f"{path}: not valid JSON ({exc}); delete it to start over") from None
    if not isinstance(body.get("images"), dict):
        raise ImageBuildError(f"{path}: expected {{'registry': ..., 'images': {{name: ...}}}}")
    return body


def write_images_lock(path: Path, registry: str, entries: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"registry": registry, "images": dict(sorted(entries.items()))}, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the build

@dataclass
class BuildRun:
    """One `images.build` run: the options, the base image, the registry client and a scratch folder."""

    host: str
    namespace: str
    push: bool
    record_registry: str
    requirements_lock: Path
    pins: dict
    recorded: dict
    base_image: str
    base_id: str
    torch_variant: str
    torch_override: str | None
    env: dict
    work: Path
    creds: tuple[str, str] | None = None
    api: Registry | None = None
    docker_config: str = ""
    logged_in: bool = False

    def prepare(self, name: str, project_wheel: Path) -> tuple[Path, dict, str, int]:
        """The image's build context, build args, content tag and number of pinned wheels."""
        spec = IMAGES[name]
        cache = CACHE / "work"
        treq = torch_spec(self.torch_variant, self.pins, self.torch_override) if spec.torch else None
        closure = resolve(spec, self.requirements_lock, self.pins, treq, cache)
        if spec.torch and self.torch_variant == "cuda" and "+cpu" in closure.get("torch", ""):
            raise ImageBuildError(f"TORCH_VARIANT=cuda resolved torch {closure['torch']}, a CPU build; "
                                  f"give the CUDA one with --torch-spec 'torch===VERSION'")
        shared = closure if name == SHARED else resolve(IMAGES[SHARED], self.requirements_lock, self.pins, None, cache)
        missing = sorted(set(shared) - set(closure))
        if missing:
            raise ImageBuildError(f"{name} lacks {', '.join(missing)} of the shared {SHARED} set; "
                                  f"add `-r {SHARED}.in` to {spec.requirements_in.name}")
        extra = {n: v for n, v in closure.items() if n not in shared}
        wheels = fetch_wheels(closure, CACHE / "wheels", self.work)
        ctx = self.work / "context" / name
        assemble_context(ctx, shared, extra, wheels, project_wheel)
        build_args = {"BASE_IMAGE": self.base_image, "TORCH_VARIANT": self.torch_variant if spec.torch else "none",
                      "FACEPIPE_VERSION": project_wheel.name.split("-")[1]}
        return ctx, build_args, content_tag(ctx, self.base_id, build_args), len(closure)

    def image(self, name: str, project_wheel: Path) -> Outcome:
        t0 = time.monotonic()
        ctx, build_args, tag, n_wheels = self.prepare(name, project_wheel)
        repo_path = f"{self.namespace}/{name}" if self.namespace else name
        ref = f"{self.host}/{repo_path}:{tag}"
        out = Outcome(name, tag)
        out.seconds["prepare"] = round(time.monotonic() - t0, 1)
        print(f"{name}: content tag {tag} ({n_wheels} pinned wheels)", flush=True)

        if self.push:
            served = self.api.manifest_digest(repo_path, tag)
            if served:
                want = self.recorded.get(name, {})
                if want.get("tag") == tag and want.get("digest") == served:
                    print(f"{name}: {ref} already pushed as {served}: nothing to do", flush=True)
                else:
                    # The same content tag means the same build context: adopt what the registry holds.
                    print(f"{name}: {ref} already in the registry as {served}: recording it", flush=True)
                out.digest = served
                return out

        if not local_image_exists(ref, self.env):
            t1 = time.monotonic()
            args = {**build_args, "CONTENT_TAG": tag}
            docker(["build", "--network", "none", "--pull=false", "--force-rm", "-t", ref,
                    *[a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")],
                    "-f", str(ctx / "Dockerfile"), str(ctx)], f"docker build {name}", self.env, stream=name)
            out.built = True
            out.seconds["build"] = round(time.monotonic() - t1, 1)
        out.size = int(docker(["image", "inspect", "--format", "{{.Size}}", ref], "inspect", self.env).strip())
        print(f"{name}: {ref} {'built in %.0f s' % out.seconds['build'] if out.built else 'exists locally'}"
              f" ({out.size / 1e6:.0f} MB)", flush=True)
        if self.push:
            self.push_and_verify(out, ref, repo_path)
        return out

    def push_and_verify(self, out: Outcome, ref: str, repo_path: str) -> None:
        """docker push, then three checks: its exit code, the digest it reports, and the registry
        serving that very digest for the tag."""
        if self.creds and not self.logged_in:
            self.env["DOCKER_CONFIG"] = self.docker_config
            docker_login(self.host, self.creds, self.env)
            self.logged_in = True
        t = time.monotonic()
        log = docker(["push", ref], f"docker push {ref}", self.env, stream=out.name)
        out.seconds["push"] = round(time.monotonic() - t, 1)
        m = re.search(rf"{re.escape(out.tag)}: digest: (sha256:[0-9a-f]{{64}}) size: \d+", log)
        if not m:
            raise ImageBuildError(f"docker push {ref} reported no digest:\n{log[-2000:]}")
        served = self.api.manifest_digest(repo_path, out.tag)
        if served != m.group(1):
            raise ImageBuildError(f"push of {ref} not verified: pushed {m.group(1)}, registry serves {served}")
        out.digest, out.pushed = served, True
        print(f"{out.name}: pushed in {out.seconds['push']:.0f} s and verified {ref} -> {served}", flush=True)


def build_images(registry: str, push: bool = True, lock_out: Path = DEFAULT_LOCK,
                 requirements_lock: Path = PROJECT / "requirements.lock", names: list[str] | None = None,
                 torch_variant: str = "cpu", torch_override: str | None = None,
                 record_registry: str | None = None, base_image: str = BASE_IMAGE,
                 base_tar: Path | None = None, env: dict | None = None, project: Path = PROJECT) -> list[Outcome]:
    """Build (and push) the images; `project` is the source checkout whose src/ becomes the wheel."""
    env = dict(env or os.environ)
    env["DOCKER_BUILDKIT"] = "0"  # the classic builder: no buildx plugin here, --network none works
    host, namespace = split_registry(registry)
    record_registry = (record_registry or registry).rstrip("/")
    split_registry(record_registry)
    names = names or list(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise ImageBuildError(f"unknown image {unknown}; known: {', '.join(IMAGES)}")
    if torch_variant not in ("cpu", "cuda"):
        raise ImageBuildError(f"--torch-variant (env TORCH_VARIANT) must be cpu or cuda, got {torch_variant!r}")
    if not requirements_lock.exists():
        raise ImageBuildError(f"{requirements_lock}: no such file (the pinned versions)")
    pins = variant_pins(torch_variant, read_lock(requirements_lock))
    previous = read_images_lock(lock_out)
    recorded = previous.get("images", {}) if previous.get("registry") == record_registry else {}
    try:
        base_id = ensure_base(base_image, base_tar, env=env)
    except BaseImageError as exc:
        raise ImageBuildError(str(exc)) from None

    (CACHE / "work").mkdir(parents=True, exist_ok=True)
    # This run's own folder (contexts, project wheel): concurrent builds must not share one.
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE / "work"))
    run = BuildRun(host, namespace, push, record_registry, requirements_lock, pins, recorded, base_image,
                   base_id, torch_variant, torch_override, env, work)
    if push:
        run.creds = credentials(host)
        run.api = Registry(host, run.creds)
    try:
        with tempfile.TemporaryDirectory(prefix="facepipe-docker-config-") as docker_config:
            run.docker_config = docker_config
            project_wheel = build_project_wheel(work, project)
            outcomes = [run.image(name, project_wheel) for name in names]
            if run.logged_in:
                subprocess.run(["docker", "logout", host], env=env, capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if push:
        entries = dict(recorded)
        for o in outcomes:
            entries[o.name] = lock_entry(o, record_registry, torch_variant)
        write_images_lock(lock_out, record_registry, entries)
        print(f"wrote {lock_out}", flush=True)
    return outcomes


def lock_entry(outcome: Outcome, registry: str, torch_variant: str) -> dict:
    """One image's line in the images lock; `torch_variant` is what pipeline.compile checks GPU steps
    against (cpu | cuda; none for an image without torch)."""
    return {"tag": outcome.tag, "digest": outcome.digest,
            "reference": f"{registry}/{outcome.name}@{outcome.digest}",
            "torch_variant": torch_variant if IMAGES[outcome.name].torch else "none"}


def summary(outcomes: list[Outcome]) -> str:
    rows = [f"{'image':16} {'tag':32} {'size MB':>8} {'built':>5} {'pushed':>6}  seconds"]
    for o in outcomes:
        size = f"{o.size / 1e6:.0f}" if o.size else "-"
        secs = " ".join(f"{k}={v}" for k, v in o.seconds.items())
        rows.append(f"{o.name:16} {o.tag:32} {size:>8} {str(o.built):>5} {str(o.pushed):>6}  {secs}")
    built = sum(o.built for o in outcomes)
    pushed = sum(o.pushed for o in outcomes)
    rows.append(f"built {built}, pushed {pushed} of {len(outcomes)} images")
    return "\n".join(rows)


def arg_parser() -> argparse.ArgumentParser:
    """The command line; TORCH_VARIANT / TORCH_SPEC from the environment are the defaults (make passes them)."""
    p = argparse.ArgumentParser(prog="python -m images.build", description=__doc__.splitlines()[0])
    p.add_argument("--registry", required=True, help="HOST[:PORT]/NAMESPACE, e.g. swr.cn-north-4.myhuaweicloud.com/facepipe")
    p.add_argument("--no-push", action="store_true", help="build (and tag) only; the lock is not touched")
    p.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help="images lock to write (default %(default)s)")
    p.add_argument("--requirements", type=Path, default=PROJECT / "requirements.lock", help="pinned versions")
    p.add_argument("--image", action="append", choices=list(IMAGES), help="only this image (repeatable)")
    p.add_argument("--torch-variant", choices=["cpu", "cuda"], default=os.environ.get("TORCH_VARIANT", "cpu"),
                   help="torch build in facepipe-train (default cpu; env TORCH_VARIANT)")
    p.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC") or None,
                   help="exact torch requirement, overriding the variant's (env TORCH_SPEC)")
    p.add_argument("--record-registry", help="write the lock's references under this registry name "
                   "(for a mirror serving the same manifests); default --registry")
    p.add_argument("--base-tar", type=Path, help="reuse/keep the base root file system tarball here")
    p.add_argument("--source", type=Path, default=PROJECT,
                   help="source tree (pyproject.toml + src/) to build the facepipe wheel from (default: this checkout)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = arg_parser().parse_args(argv)
    try:
        outcomes = build_images(a.registry, push=not a.no_push, lock_out=a.lock, requirements_lock=a.requirements,
                                names=a.image, torch_variant=a.torch_variant, torch_override=a.torch_spec,
                                record_registry=a.record_registry, base_tar=a.base_tar, project=a.source)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(outcomes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
