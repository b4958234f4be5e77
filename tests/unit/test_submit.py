"""jobs/submit.py without a cluster: what it would ship (never a secret file) and what its dry
run prints (never a secret value)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SECRET = "hf_sup3rS3cretValue"

_spec = importlib.util.spec_from_file_location("leap_submit", REPO / "jobs" / "submit.py")
submit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit)

# files a careless working directory holds next to the code; none may leave the machine
SECRET_FILES = [".env", ".env.local", "deploy/.env.prod", "server.pem", "keys/private.key", ".netrc",
                "credentials.json", "conf/credentials", ".aws/credentials", ".ssh/id_ed25519",
                "home/.ssh/config", "hf_token", "auth_token.txt", ".ray/auth_token", ".git/config",
                "id_rsa", "client_secret.json"]
# files that look close but are the project's (or a local model's) own
KEEP_FILES = ["orchestrator/engines/tokenizer.py", "tests/unit/test_tokenizer.py",
              "models/tiny/tokenizer.json", "models/tiny/tokenizer_config.json",
              "models/tiny/special_tokens_map.json", "models/tiny/added_tokens.json", "conf/config.yaml",
              "README.md", "env.py", "keyboard.txt"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for name in SECRET_FILES + KEEP_FILES:
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"HF_TOKEN={SECRET}\n" if name in SECRET_FILES else "ok\n")
    return root


def _dry_run(capsys, *argv: str) -> str:
    assert submit.main(["--dry-run", *argv]) == 0
    return capsys.readouterr().out


def test_dry_run_shows_the_excludes_and_never_a_secret(capsys, workdir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET + "-from-shell")
    out = _dry_run(capsys, "--address", "http://admin:pa55word@127.0.0.1:8265", "--working-dir", str(workdir),
                   "--env", f"HF_TOKEN={SECRET}", "--env", "HF_HUB_OFFLINE=1", "--env", "WANDB_API_KEY=abc123xyz",
                   "--env", "HF_TOKEN", "--exclude", "data/big/", "+experiment=demo")
    assert SECRET not in out and "abc123xyz" not in out and "pa55word" not in out
    renv = json.loads(out[out.index("{"):])
    assert renv["env_vars"] == {"HF_TOKEN": "***", "HF_HUB_OFFLINE": "***", "WANDB_API_KEY": "***"}
    for pattern in (".env", ".env.*", "*.pem", "*.key", ".netrc", "credentials*", ".aws/", ".ssh/",
                    "*token*", ".git/", "data/big/", ".venv/"):
        assert pattern in renv["excludes"], pattern
    assert "entrypoint: python -m orchestrator +experiment=demo" in out


def test_the_job_still_gets_the_real_values(workdir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "from-shell")
    args = submit.build_parser().parse_args(["--working-dir", str(workdir), "--env", "A=1=2", "--env", "HF_TOKEN"])
    assert submit.runtime_env(args)["env_vars"] == {"A": "1=2", "HF_TOKEN": "from-shell"}
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SystemExit) as exit_:
        submit.runtime_env(args)
    assert exit_.value.code == 2 and "--env HF_TOKEN: HF_TOKEN is not set" in capsys.readouterr().err


def test_a_refused_token_is_named_without_echoing_secrets(monkeypatch, capsys):
    """What the Jobs API client raises on a cluster with token authentication (seen with Ray
    2.60: AuthenticationError, 'Missing authentication token') becomes one line with the fix."""
    ray_jobs = pytest.importorskip("ray.job_submission")

    class AuthenticationError(Exception):
        pass

    def refuse(address):
        raise AuthenticationError("Authentication required: Unauthorized: Missing authentication token")

    monkeypatch.setattr(ray_jobs, "JobSubmissionClient", refuse)
    with pytest.raises(SystemExit) as exit_:
        submit._client("http://me:pa55word@head:8265")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "pa55word" not in err
    assert "RAY_AUTH_MODE=token" in err and "~/.ray/auth_token" in err and "RAY_AUTH_TOKEN" in err


def test_a_user_pattern_cannot_bring_a_secret_back():
    patterns = submit.excludes(["!.env", "!*.pem", "scratch/"])
    assert patterns.index("scratch/") < patterns.index(".env") and patterns[-1] == submit.SECRET_EXCLUDES[-1]
    assert patterns.index("!.env") < patterns.index(".env")  # the later pattern wins


def _shipped(workdir: Path, tmp_path: Path, extra=()) -> set[str]:
    """The files in the package Ray would upload: built by Ray's own packaging code."""
    pytest.importorskip("ray")
    try:
        from ray._private.runtime_env.packaging import create_package
    except ImportError:  # a private API; another Ray version may have moved it
        pytest.skip("this Ray has no ray._private.runtime_env.packaging.create_package")
    target = tmp_path / "package.zip"
    kwargs = {"include_parent_dir": False, "excludes": submit.excludes(extra)}
    if "include_gitignore" in inspect.signature(create_package).parameters:
        kwargs["include_gitignore"] = True  # what a job's upload does by default
    create_package(str(workdir), target, **kwargs)
    with zipfile.ZipFile(target) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def test_ray_packs_no_secret_file(workdir, tmp_path):
    shipped = _shipped(workdir, tmp_path, ["!.env"])
    assert shipped == set(KEEP_FILES)


def test_the_repository_ships_all_its_code(tmp_path):
    """The secret patterns must not catch a file the job needs: every .py and .yaml under
    orchestrator/ and conf/ of this checkout is in the package."""
    shipped = _shipped(REPO, tmp_path)
    wanted = {str(p.relative_to(REPO)) for d in ("orchestrator", "conf") for p in (REPO / d).rglob("*")
              if p.suffix in (".py", ".yaml", ".txt") and "__pycache__" not in p.parts}
    assert wanted and wanted <= shipped, sorted(wanted - shipped)
    assert "orchestrator/engines/tokenizer.py" in shipped


def test_a_head_without_its_agent_yet_is_retried():
    """Right after `ray start` the Jobs API answers 500 'No available agent' for a while."""
    calls = []

    class Client:
        def submit_job(self, **kwargs):
            calls.append(kwargs)
            if len(calls) < 3:
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                                   "please try again later..")
            return "raysubmit_1"

    assert submit.submit_job(Client(), {"entrypoint": "x"}, wait_s=60, poll_s=0) == "raysubmit_1"
    assert len(calls) == 3

    class Broken:
        def submit_job(self, **kwargs):
            raise RuntimeError("Request failed with status code 400: bad runtime_env")

    with pytest.raises(RuntimeError, match="bad runtime_env"):
        submit.submit_job(Broken(), {"entrypoint": "x"}, wait_s=60, poll_s=0)
