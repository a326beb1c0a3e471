"""A real Orthanc PACS (with its DICOMweb plugin) for integration tests.

`OrthancServer` runs the system `Orthanc` binary (Debian packages `orthanc` and
`orthanc-dicomweb`) as a child process on free loopback ports, with its storage in a
temporary directory that is removed on exit. It is never a system service.

    with OrthancServer() as pacs:
        pacs.upload(paths)
        client = DICOMwebClient(pacs.dicomweb_url)

Plain HTTP and DIMSE by default; `tls=OrthancTls(...)` serves HTTPS and DICOM TLS instead
(certificates from testbed/certs.py).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import requests
from pydicom.data import get_testdata_files

from testbed import services

if TYPE_CHECKING:
    from testbed.certs import Issued
    from testbed.tls_front import TlsFront

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
INSTALL_HINT = (
    "install them with `apt-get install -y orthanc orthanc-dicomweb` (the CI test job runs "
    "this before pytest); the integration tests need a real Orthanc and are never skipped"
)


class OrthancError(RuntimeError):
    """Orthanc is missing, did not start, or answered an upload badly."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fast_tmp() -> str | None:
    """A RAM-backed temp dir if there is one: Orthanc syncs its SQLite index on every
    stored instance, which dominates upload time on a disk."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def find_orthanc() -> tuple[str, str]:
    """Paths of the Orthanc binary and the DICOMweb plugin, or a clear error."""
    binary = shutil.which(ORTHANC_BINARY) or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        raise OrthancError(f"the `{ORTHANC_BINARY}` binary is not installed: {INSTALL_HINT}")
    plugin = os.environ.get("ORTHANC_DICOMWEB_PLUGIN", DICOMWEB_PLUGIN)
    if not os.path.exists(plugin):
        raise OrthancError(f"the Orthanc DICOMweb plugin {plugin} is missing: {INSTALL_HINT}")
    return binary, plugin


@dataclass(frozen=True)
class OrthancTls:
    """TLS on the archive's HTTP and DICOM ports, for one test.

    `server` (issued by `ca`) is the certificate of both. `client_ca` (a PEM of the CAs whose
    client certificates are accepted) turns on client verification: a connection without such a
    certificate is refused. DICOM TLS is Orthanc's own (DCMTK, PS3.15 B.1: DicomTlsEnabled...);
    HTTPS is HAProxy's in front of Orthanc's plain HTTP (testbed/tls_front.py says why).
    """

    ca: Issued
    server: Issued
    client_ca: Path | None = None
    https: bool = True
    dicom: bool = True

    def orthanc_config(self) -> dict:
        if not self.dicom:
            return {}
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.server.cert),
            "DicomTlsPrivateKey": str(self.server.key),
            # Orthanc 1.10 wants this file even when no client certificate is required
            "DicomTlsTrustedCertificates": str(self.client_ca or self.ca.cert),
            "DicomTlsRemoteCertificateRequired": self.client_ca is not None,
        }


class OrthancServer:
    """Context manager around one throw-away Orthanc process.

    DIMSE: `dicom_port` and `aet`; C-ECHO and C-FIND are answered for any calling AET,
    associations whose called AET is not `aet` are rejected (`extra_config` overrides).
    `users` (name -> password) turns AuthenticationEnabled on; `.auth` is then the first
    user's (name, password), used by `upload` and `studies`. Storage and log live in a
    temporary directory (on /dev/shm when there is one), removed on exit.
    """

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        aet: str = "ORTHANCTEST",
        startup_timeout: float = 30.0,
        stop_grace: float = 1.0,
        extra_config: dict | None = None,
        tls: OrthancTls | None = None,
    ):
        self.users = dict(users or {})
        self.tls = tls
        self.aet = aet
        self.startup_timeout = startup_timeout
        # Orthanc needs 3-5 s to stop cleanly (its threads poll once a second); the
        # storage is thrown away, so after a short grace it is killed
        self.stop_grace = stop_grace
        self.extra_config = dict(extra_config or {})
        self.http_port: int | None = None
        self.dicom_port: int | None = None
        self.tmpdir: Path | None = None
        self.name = "facade-test"
        self.log_path: Path | None = None
        self.rejected: list[tuple[str, str]] = []
        self._process: subprocess.Popen | None = None
        self._log = None
        self._session = requests.Session()
        self._front: TlsFront | None = None
        if self.users:
            self._session.auth = next(iter(self.users.items()))

    # -- addresses -----------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where clients reach the REST API and DICOMweb (HTTPS with `tls`)."""
        if self._front is not None:
            return f"https://127.0.0.1:{self._front.port}"
        return self._plain_url

    @property
    def _plain_url(self) -> str:
        """Orthanc's own HTTP port: the testbed's requests (uploads, readiness) go there."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + "/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return self._session.auth

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _config(self, plugin: str) -> dict:
        storage = self.tmpdir / "storage"
        config = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            # DIMSE tests query as an AE Orthanc does not know (no DicomModalities entry):
            # answer its C-ECHO and C-FIND, and reject associations to another called AET
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "HttpDescribeErrors": True,
            "SaveJobs": False,
            "StorageCompression": False,
            "Plugins": [plugin],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Ssl": self.tls is not None and self.tls.https,
            },
        }
        if self.tls is not None:
            config.update(self.tls.orthanc_config())
        config.update(self.extra_config)
        return config

    def start(self) -> None:
        services.require("Orthanc")
        binary, plugin = find_orthanc()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="orthanc-test-", dir=_fast_tmp()))
        self.name = f"facade-{self.tmpdir.name}"  # tells our Orthanc from one on a reused port
        self.log_path = self.tmpdir / "orthanc.log"
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.http_port, self.dicom_port = free_port(), free_port()
            config_path = self.tmpdir / "orthanc.json"
            config_path.write_text(json.dumps(self._config(plugin), indent=2))
            self._log = open(self.log_path, "ab")
            self._process = subprocess.Popen(
                [binary, "--no-jobs", str(config_path)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmpdir,
            )
            atexit.register(self._terminate)  # never leave an Orthanc behind
            try:
                self._wait_ready()
                self._start_front()
                return
            except OrthancError as exc:
                last_error = str(exc)
                self._terminate()
                if "DICOMweb plugin" in last_error:
                    break
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        raise OrthancError(f"Orthanc did not start: {last_error}\n--- Orthanc log ---\n{log[-8000:]}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(f"Orthanc exited with code {self._process.returncode}")
            try:
                response = self._session.get(self._plain_url + "/system", timeout=2)
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if response.status_code == 200 and response.json().get("Name") != self.name:
                raise OrthancError(f"another server answers on port {self.http_port}")
            if response.status_code == 200:
                # Orthanc starts without a plugin it cannot load: check DICOMweb is there
                plugins = self._session.get(self._plain_url + "/plugins", timeout=5).json()
                if "dicom-web" not in plugins:
                    self._terminate()
                    raise OrthancError(f"Orthanc runs without its DICOMweb plugin (plugins: {plugins}): {INSTALL_HINT}")
                return
            time.sleep(0.05)
        raise OrthancError(f"/system did not answer within {self.startup_timeout:.0f}s")

    def _start_front(self) -> None:
        """HTTPS in front of Orthanc's HTTP port, with `tls` (testbed/tls_front.py)."""
        if self.tls is None or not self.tls.https:
            return
        from testbed.tls_front import TlsFront

        try:
            self._front = TlsFront(self.tmpdir, self.http_port, self.tls.server.bundle, self.tls.client_ca)
        except RuntimeError as exc:
            raise OrthancError(str(exc)) from None

    def _terminate(self) -> None:
        atexit.unregister(self._terminate)
        process, self._process = self._process, None
        if process is not None:
            services.end_process(process, self.stop_grace)
        if self._log is not None:
            self._log.close()
            self._log = None

    def halt(self) -> None:
        """Stop the process but keep its storage and ports, for `resume()` (fault tests)."""
        self._terminate()

    def resume(self) -> None:
        """Start a halted Orthanc again, with the same storage, ports and configuration."""
        binary, _ = find_orthanc()
        self._log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            [binary, "--no-jobs", str(self.tmpdir / "orthanc.json")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.tmpdir,
        )
        atexit.register(self._terminate)
        self._wait_ready()

    def stop(self) -> None:
        if self._front is not None:
            self._front.stop()
            self._front = None
        self._terminate()
        self._session.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    # -- REST helpers --------------------------------------------------------------
    def get(self, path: str, **params):
        response = self._session.get(self._plain_url + path, params=params or None, timeout=30)
        response.raise_for_status()
        return response.json()

    def delete(self, path: str) -> None:
        response = self._session.delete(self._plain_url + path, timeout=30)
        response.raise_for_status()

    def upload(self, paths, workers: int = 4) -> list[dict]:
        """POST each file to /instances; return Orthanc's answers for the accepted ones.

        Files Orthanc rejects (not DICOM, no identifiers...) are skipped and recorded in
        `self.rejected` as (path, reason). Uploads run on a few threads (Orthanc commits
        each instance; in parallel the fixture loads several times faster), after the first
        file of each study (in the given order) went alone: Orthanc takes a study's
        attributes from its first instance, and instances of one study may disagree (the
        pydicom NM study's files name two institutions), so every Orthanc of the same files
        answers the same.
        """
        local = threading.local()

        def post(path):
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
                session.auth = self._session.auth
            response = session.post(
                self._plain_url + "/instances",
                data=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
                timeout=60,
            )
            if response.status_code == 200:
                return path, response.json(), None
            try:
                body = response.json()
                detail = body.get("Details") or body.get("Message")
            except ValueError:
                detail = response.text[:200]
            return path, None, f"HTTP {response.status_code}: {detail}"

        answers = []
        firsts, rest = _first_of_each_study(list(paths))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path, answer, error in [*map(post, firsts), *pool.map(post, rest)]:
                if error is None:
                    answers.append(answer)
                else:
                    self.rejected.append((str(path), error))
        return answers

    def studies(self) -> list[dict]:
        """Every study Orthanc holds, as GET /studies?expand gives them."""
        return self.get("/studies", expand="")


def _first_of_each_study(paths: list) -> tuple[list, list]:
    """(the first file of each StudyInstanceUID, all the others), order kept."""
    seen: set = set()
    firsts, rest = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                uid = pydicom.dcmread(
                    path, stop_before_pixels=True, force=True, specific_tags=["StudyInstanceUID"]
                ).get("StudyInstanceUID")
            except Exception:  # noqa: BLE001 - Orthanc decides about files pydicom cannot read
                uid = None
            if uid and str(uid) not in seen:
                seen.add(str(uid))
                firsts.append(path)
            else:
                rest.append(path)
    return firsts, rest


# -- helpers the integration tests share ---------------------------------------------
def readable_testdata_files() -> list[str]:
    """pydicom's shipped test files that pydicom reads as DICOM instances.

    Part 10 files, plus files without preamble that still carry SOP and Study Instance
    UIDs; Orthanc decides about the rest (its rejections end up in `orthanc.rejected`).
    """
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files()):
            if not os.path.isfile(path):
                continue
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - no preamble: keep it only if it is an instance
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                except Exception:  # noqa: BLE001
                    continue
                if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
                    continue
            files.append(path)
    return files


def orthanc_tree(server) -> dict:
    """{StudyInstanceUID: {SeriesInstanceUID: {SOPInstanceUID}}} from Orthanc's REST API.

    Orthanc keys a study by PatientID + StudyInstanceUID, so one UID may be two Orthanc
    studies: the tree is by UID, as FHIR sees it.
    """
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in server.get("/studies", expand="")}
    series = {
        s["ID"]: (studies[s["ParentStudy"]], s["MainDicomTags"]["SeriesInstanceUID"])
        for s in server.get("/series", expand="")
    }
    tree: dict = defaultdict(lambda: defaultdict(set))
    for uid in studies.values():
        tree[uid]  # a study without series still counts
    for instance in server.get("/instances", expand=""):
        study_uid, series_uid = series[instance["ParentSeries"]]
        tree[study_uid][series_uid].add(instance["MainDicomTags"]["SOPInstanceUID"])
    return {k: dict(v) for k, v in tree.items()}


def source_tree(records) -> dict:
    return {
        r.uid: {s.attrs["0020000E"]["Value"][0]: {i["00080018"]["Value"][0] for i in s.instances} for s in r.series}
        for r in records
    }


def assert_whole_archive(source, items, expected: dict) -> list:
    """A source's run over the fixture archive: every study once, the right series and
    instances, no instance twice, and counters that agree. Returns the StudyRecords."""
    from app.sources.base import StudyFailure, StudyRecord

    records = [i for i in items if isinstance(i, StudyRecord)]
    assert [i for i in items if isinstance(i, StudyFailure)] == []
    assert sorted(r.uid for r in records) == sorted(expected)  # each study exactly once
    assert source_tree(records) == expected
    for record in records:
        for series in record.series:  # no instance twice, even where Orthanc answers twice
            uids = [i["00080018"]["Value"][0] for i in series.instances]
            assert len(uids) == len(set(uids))
    assert source.total() == len(items) == source.stats["studies_listed"]
    assert source.stats["instances"] == sum(len(s) for st in expected.values() for s in st.values())
    return records
