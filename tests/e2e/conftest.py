"""Fixtures of the real-browser test: a JupyterLab server on a scratch copy of the notebooks, and headless Chromium.

The server runs from this project's environment (`sys.executable -m jupyter lab`), bound to 127.0.0.1 on a free
port with a random token, and serves a temporary folder holding copies of `notebooks/` and a `data` link to the
repository's `data/` (the notebooks load `../data/checkpoints`): whatever the browser does, autosave included, can
never touch the committed notebooks. Its settings, workspaces and runtime files live in that folder too, so a
developer's own JupyterLab set-up does not change what the test sees. The browser is the system's Chromium (Debian's
`chromium`, or CHROMIUM=/path), driven by Playwright's sync API; nothing is downloaded.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from lab_driver import ARTIFACTS

REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 180
SERVER_STOP_TIMEOUT_S = 30
# JupyterLab user settings for the test: every cell stays in the DOM (no virtual scrolling), and no news pop-up.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that the `page` fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lab_home(root: Path) -> Path:
    """A scratch folder for the server: notebooks/ (copies), data -> the repository's data/, and lab settings."""
    notebooks = root / "notebooks"
    notebooks.mkdir()
    for source in [*(REPO / "notebooks").glob("*.ipynb"), REPO / "notebooks" / "sanitize.cfg"]:
        shutil.copy2(source, notebooks / source.name)
    (root / "data").symlink_to(REPO / "data", target_is_directory=True)
    for name, values in LAB_SETTINGS.items():
        path = root / ".jupyter-e2e" / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return root


def lab_command(home: Path, port: int, token: str) -> list:
    """The `jupyter lab` command line: local only, no browser, nothing fetched from the internet."""
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}",
               "--ServerApp.port_retries=0", "--ServerApp.terminals_enabled=False",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    if os.geteuid() == 0:  # containers and CI often run as root, which jupyter refuses without this flag
        command.append("--allow-root")
    return command


def lab_environment(home: Path) -> dict:
    """os.environ with Jupyter's config, runtime, settings and workspace folders moved into the scratch folder."""
    private = home / ".jupyter-e2e"
    return {**os.environ, "JUPYTER_CONFIG_DIR": str(private / "config"),
            "JUPYTER_RUNTIME_DIR": str(private / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(private / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(private / "workspaces")}


def wait_until_up(server: subprocess.Popen, status_url: str, log: Path) -> None:
    """Poll /api/status until the server answers; fail with its log if it exits or never answers."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.returncode} before it answered; its log:\n"
                        f"{log.read_text()}")
        try:
            with urllib.request.urlopen(status_url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {status_url.split('?')[0]} within {SERVER_START_TIMEOUT_S} s; "
                f"its log:\n{log.read_text()}")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it then shuts its kernels down), SIGKILL it after a timeout.

    Kernels run in process groups of their own, so any that outlive the server are killed one by one.
    """
    kernels = psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=SERVER_STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    server.wait()  # after SIGKILL this returns at once; it reaps the process either way
    for process in kernels:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def interrupt_on_sigterm(signum, frame):
    """SIGTERM (a CI job cancelled, `timeout`) as Ctrl-C, so that pytest still runs the fixtures' teardown."""
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def jupyter_lab(tmp_path_factory):
    """A running JupyterLab on a scratch copy of the notebooks: yields (base_url, token, home); always stopped.

    The server runs in a session of its own (a Ctrl-C meant for pytest must not reach it first), so stopping it is
    this fixture's job alone: on success, failure, Ctrl-C and SIGTERM alike.
    """
    previous_handler = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    home = make_lab_home(tmp_path_factory.mktemp("lab"))
    port, token = free_port(), secrets.token_hex(16)
    log = home / ".jupyter-e2e" / "server.log"
    base_url = f"http://127.0.0.1:{port}"
    with log.open("w") as log_file:
        server = subprocess.Popen(lab_command(home, port, token), cwd=home, env=lab_environment(home),
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(server, f"{base_url}/api/status?token={token}", log)
        yield base_url, token, home
    finally:
        stop_server(server)
        signal.signal(signal.SIGTERM, previous_handler)


def chromium_path() -> str:
    """The Chromium binary to drive: $CHROMIUM, else `chromium` on PATH; fails (never skips) when there is none."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found for the real-browser test: install it with `sudo apt-get install chromium` "
                    "(Debian/Ubuntu) or point CHROMIUM=/path/to/chromium at a Chromium or Chrome binary "
                    "(do not run `playwright install`: this project downloads no browsers)")
    return path


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium through Playwright (whose default already passes --no-sandbox, needed as root)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True,
                                              args=["--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser page; on failure a full-page screenshot goes to outputs/e2e/FAILED_<test>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    tab = context.new_page()
    try:
        yield tab
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            tab.screenshot(path=ARTIFACTS / f"FAILED_{request.node.name}.png", full_page=True)
        context.close()
