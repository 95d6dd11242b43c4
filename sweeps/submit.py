"""``theoryscope submit``: a sweep as a Ray Job, so the driver runs on the cluster.

The package (``sweeps.package``) and the spec are staged into a folder that becomes the
job's ``working_dir``; the job runs ``python -m theoryscope.cli launch spec.toml --results
RESULTS --name NAME --quiet`` on the head node,
where Ray sets ``RAY_ADDRESS`` so the launch joins that cluster. The head's ``python`` must
have theoryscope's dependencies (``examples/cluster.yaml`` installs them), and RESULTS must
be a path every node and the laptop see (a shared filesystem): ``status`` and ``query``
then read the results from it. The spec is validated here first, so a bad one is never
submitted.

Clusters with token authentication (the default of Ray >= 2.52 for local clusters) need
the token: it is read from ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``,
or ``~/.ray/auth_token``, and sent as a bearer token.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from theoryscope.core.errors import TheoryscopeError, first_line
from theoryscope.sweeps.package import stage_package

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT = 60.0  # seconds to wait for the job agent of a head that just started


@dataclass(frozen=True)
class Submitted:
    job_id: str
    sweep: str
    results: str
    address: str


def auth_headers() -> dict[str, str]:
    """The cluster's bearer token, where this machine has one."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise TheoryscopeError(f"RAY_AUTH_TOKEN_PATH: cannot read {path} ({exc.strerror})") from None
    if not token and (Path.home() / ".ray" / "auth_token").is_file():
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def stage_project(spec_text: str, into: Path) -> Path:
    """Copy the package and the spec into ``into`` (the job's working_dir)."""
    stage_package(into)
    (into / "spec.toml").write_text(spec_text, encoding="utf-8")
    return into


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as exc:  # noqa: BLE001 - connection refused, wrong URL, missing token: one line
        raise TheoryscopeError(f"--to {address}: cannot submit there ({first_line(exc)})") from None


def submit_sweep(spec_text: str, sweep: str, results: str, address: str) -> Submitted:
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="theoryscope-job-") as staging:
        stage_project(spec_text, Path(staging))
        entrypoint = shlex.join(["python", "-m", "theoryscope.cli", "launch", "spec.toml", "--results", results,
                                 "--name", sweep, "--quiet"])
        job_id = f"theoryscope-{sweep}-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + AGENT_WAIT
        while True:
            try:
                jobs.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": staging}, submission_id=job_id)
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError for HTTP errors
                # A head that just started answers before its job agent is up.
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                raise TheoryscopeError(f"--to {address}: the job was refused ({first_line(exc)})") from None
    return Submitted(job_id, sweep, results, address)


def wait_for(submitted: Submitted, poll_seconds: float = 2.0, timeout: float | None = None) -> tuple[str, str]:
    """Block until the job ends; its final status and its logs."""
    jobs = client(submitted.address)
    started = time.monotonic()
    while True:
        state = jobs.get_job_status(submitted.job_id)
        status = str(getattr(state, "value", state))
        if status in TERMINAL:
            return status, jobs.get_job_logs(submitted.job_id)
        if timeout is not None and time.monotonic() - started > timeout:
            return status, jobs.get_job_logs(submitted.job_id)
        time.sleep(poll_seconds)
