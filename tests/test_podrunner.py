"""The pod runner against the real API server: pods created directly (no controllers), bound to its node and run
as local processes; each test asserts on what the processes saw and on the pod status the runner wrote."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import node_for, running
from gradatim.cluster.kubelet import LOST_MESSAGE, Container, PodProcesses, admission_error, expand, pod_cpu, quantity
from gradatim.cluster.podrunner import PodRunner

REPO = str(Path(__file__).resolve().parents[1])
JOB_LABEL = "training.kubeflow.org/job-name"


@pytest.fixture
def runner(kube, namespace, tmp_path):
    r = PodRunner(kube, tmp_path / "pods", namespace, extra_env={"PYTHONPATH": REPO}, prometheus_sd_dir=tmp_path / "sd",
                  poll_seconds=0.2, cpus=2, node_name=node_for(namespace))
    (tmp_path / "sd").mkdir()
    with running(r):
        yield r


def container(script: str, *args: str, **fields) -> dict:
    return {"name": fields.pop("name", "main"), "image": "python:3.11", "command": [sys.executable, "-c", script], "args": list(args), **fields}


def pod(name: str, *containers: dict, labels: dict | None = None, **spec) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"restartPolicy": "Never", "containers": list(containers), **spec}}


def create(kube, namespace: str, body: dict) -> None:
    deadline = time.monotonic() + 15
    while True:  # a fresh namespace's default ServiceAccount, which admission requires, comes a moment later
        try:
            client.CoreV1Api(kube).create_namespaced_pod(namespace, body)
            return
        except ApiException as err:
            if err.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read(kube, namespace: str, name: str) -> dict:
    return json.loads(client.CoreV1Api(kube).read_namespaced_pod(name, namespace, _preload_content=False).data)


def wait(kube, namespace: str, name: str, check, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        p = read(kube, namespace, name)
        if check(p):
            return p
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never {what}: {json.dumps(p.get('status'))}")
        time.sleep(0.2)


def wait_phase(kube, namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    return wait(kube, namespace, name, lambda p: p["status"].get("phase") == phase, phase, timeout)


def state(p: dict, index: int = 0, key: str = "containerStatuses") -> dict:
    return p["status"][key][index]["state"]


def test_env_args_and_volumes_as_the_kubelet_gives_them(kube, namespace, runner, tmp_path):
    core = client.CoreV1Api(kube)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "stage.json": '{"stage": 1}'}})
    script = """
import json, os, sys
seen = {k: os.environ.get(k) for k in ("PLAIN", "TOKEN", "MODE", "MY_NAME", "MY_TEAM", "MY_NOTE", "MY_NODE", "COMBINED", "CPUS", "SCRATCH")}
seen["argv"] = sys.argv[1:]
seen["stage"] = open(sys.argv[3]).read()
open(os.path.join(os.environ["SCRATCH"], "written"), "w").write("x")
json.dump(seen, open(os.environ["OUT"], "w"))
"""
    env = [{"name": "OUT", "value": str(tmp_path / "seen.json")}, {"name": "PLAIN", "value": "hello"},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
           {"name": "ABSENT", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}}},
           {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "MY_TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
           {"name": "MY_NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
           {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "COMBINED", "value": "$(PLAIN)/$(MODE)/$(UNKNOWN)"},
           {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
           {"name": "SCRATCH", "value": "/scratch"}]
    body = pod("probe", container(script, "$(PLAIN)-arg", "$$(PLAIN)", "/etc/settings/stage.json", env=env,
                                  resources={"limits": {"cpu": "500m"}},
                                  volumeMounts=[{"name": "settings", "mountPath": "/etc/settings"}, {"name": "scratch", "mountPath": "/scratch"},
                                                {"name": "dshm", "mountPath": "/dev/shm"}]),
               labels={"team": "red"}, volumes=[{"name": "settings", "configMap": {"name": "settings"}}, {"name": "scratch", "emptyDir": {}},
                                                {"name": "dshm", "emptyDir": {"medium": "Memory"}}])
    body["metadata"]["annotations"] = {"note": "hi"}
    create(kube, namespace, body)
    p = wait_phase(kube, namespace, "probe", "Succeeded")

    seen = json.loads((tmp_path / "seen.json").read_text())
    pod_dir = tmp_path / "pods" / namespace / "probe"
    assert {k: seen[k] for k in ("PLAIN", "TOKEN", "MODE", "MY_NAME", "MY_TEAM", "MY_NOTE", "MY_NODE", "COMBINED", "CPUS")} == {
        "PLAIN": "hello", "TOKEN": "s3cr3t", "MODE": "fast", "MY_NAME": "probe", "MY_TEAM": "red", "MY_NOTE": "hi",
        "MY_NODE": runner.node_name, "COMBINED": "hello/fast/$(UNKNOWN)", "CPUS": "1"}
    assert seen["argv"] == ["hello-arg", "$(PLAIN)", str(pod_dir / "volumes" / "settings" / "stage.json")], "expanded, then the mount rewritten"
    assert json.loads(seen["stage"]) == {"stage": 1}
    assert seen["SCRATCH"] == str(pod_dir / "volumes" / "scratch") and (pod_dir / "volumes" / "scratch" / "written").read_text() == "x"
    [api_access] = pod_dir.glob("volumes/kube-api-access-*")  # the projected volume admission adds to every pod
    assert (api_access / "namespace").read_text() == namespace and (api_access / "token").read_text().count(".") == 2

    status = p["status"]
    assert p["spec"]["nodeName"] == runner.node_name and status["hostIP"] == "127.0.0.1" and "podIP" not in status
    assert status["startTime"]
    terminated = state(p)["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed" and terminated["containerID"].startswith("gradatim://")
    assert terminated["startedAt"] <= terminated["finishedAt"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {t: conditions[t]["status"] for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")} == {
        "PodScheduled": "True", "Initialized": "True", "ContainersReady": "False", "Ready": "False"}
    assert conditions["Ready"]["reason"] == "PodCompleted" and conditions["Ready"]["lastTransitionTime"]
    assert status["containerStatuses"][0]["imageID"].startswith("docker.io/library/python@sha256:")
    node = client.CoreV1Api(kube).read_node(runner.node_name)
    assert node.status.capacity["cpu"] == "2" and {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


def test_failures_carry_the_termination_message_or_the_log_tail(kube, namespace, runner):
    create(kube, namespace, pod("told", container("import sys; open(sys.argv[1], 'w').write('bad input: x'); sys.exit(3)", "/dev/termination-log")))
    create(kube, namespace, pod("silent", container("import sys\nfor i in range(100): print(f'line {i}')\nsys.exit(2)",
                                                    terminationMessagePolicy="FallbackToLogsOnError")))
    told = state(wait_phase(kube, namespace, "told", "Failed"))["terminated"]
    assert told["exitCode"] == 3 and told["reason"] == "Error" and told["message"] == "bad input: x"
    silent = state(wait_phase(kube, namespace, "silent", "Failed"))["terminated"]
    assert silent["exitCode"] == 2 and silent["reason"] == "Error"
    assert silent["message"].splitlines() == [f"line {i}" for i in range(20, 100)], "the log's last 80 lines"


def test_init_containers_run_first_in_order(kube, namespace, runner, tmp_path):
    # The path comes as env, which the runner rewrites to the volume's directory (a path inside a script it cannot see).
    shared = {"env": [{"name": "ORDER", "value": "/shared/order"}], "volumeMounts": [{"name": "work", "mountPath": "/shared"}]}

    def append(word: str) -> dict:
        return container(f"import os; open(os.environ['ORDER'], 'a').write('{word}\\n')", name=word, **shared)

    main = container("import os, shutil, sys; open(os.environ['ORDER'], 'a').write('main\\n'); shutil.copy(os.environ['ORDER'], sys.argv[1])",
                     str(tmp_path / "order"), **shared)
    create(kube, namespace, pod("ordered", main, initContainers=[append("first"), append("second")], volumes=[{"name": "work", "emptyDir": {}}]))
    p = wait_phase(kube, namespace, "ordered", "Succeeded")
    assert (tmp_path / "order").read_text().split() == ["first", "second", "main"]
    inits = [state(p, i, "initContainerStatuses")["terminated"] for i in range(2)]
    assert [t["exitCode"] for t in inits] == [0, 0] and inits[0]["finishedAt"] <= inits[1]["startedAt"]

    failing = container("raise SystemExit(5)", name="setup")
    never = container("import sys; open(sys.argv[1], 'w').write('ran')", str(tmp_path / "ran"))
    create(kube, namespace, pod("bad-init", never, initContainers=[failing]))
    p = wait_phase(kube, namespace, "bad-init", "Failed")
    assert state(p, 0, "initContainerStatuses")["terminated"]["exitCode"] == 5
    assert "waiting" in state(p) and not (tmp_path / "ran").exists(), "a failed init container (restartPolicy Never) fails the pod"


def test_on_failure_restarts_the_container_in_place(kube, namespace, runner):
    script = """
import os, sys
if os.path.exists(sys.argv[1]):
    print('second run'); sys.exit(0)
open(sys.argv[1], 'w').close()
print('first run'); sys.exit(4)
"""
    create(kube, namespace, pod("flaky", container(script, "/state/marker", volumeMounts=[{"name": "state", "mountPath": "/state"}]),
                                restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]))
    p = wait_phase(kube, namespace, "flaky", "Succeeded")
    status = p["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1 and status["state"]["terminated"]["exitCode"] == 0
    assert status["lastState"]["terminated"]["exitCode"] == 4 and status["lastState"]["terminated"]["reason"] == "Error"
    log = (runner.workdir / namespace / "flaky" / "main.log").read_text()
    assert log.split() == ["first", "run", "second", "run"], "the log is appended to"


def test_a_missing_secret_holds_the_container_until_it_exists(kube, namespace, runner, tmp_path):
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    create(kube, namespace, pod("waits", container("import os, sys; open(sys.argv[1], 'w').write(os.environ['TOKEN'])", str(tmp_path / "token"), env=env)))
    p = wait(kube, namespace, "waits", lambda p: "waiting" in state(p) if p["status"].get("containerStatuses") else False, "waiting")
    assert state(p)["waiting"] == {"reason": "CreateContainerConfigError", "message": 'secret "late" not found'}
    assert p["status"]["phase"] == "Pending"
    client.CoreV1Api(kube).create_namespaced_secret(namespace, {"metadata": {"name": "late"}, "stringData": {"token": "finally"}})
    wait_phase(kube, namespace, "waits", "Succeeded")
    assert (tmp_path / "token").read_text() == "finally"

    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "nope"}}}]
    create(kube, namespace, pod("no-key", container("pass", env=env)))
    p = wait(kube, namespace, "no-key", lambda p: "waiting" in state(p) if p["status"].get("containerStatuses") else False, "waiting")
    assert state(p)["waiting"]["message"] == f"couldn't find key nope in Secret {namespace}/late"


def test_service_names_are_loopback_and_each_job_has_its_own_port(kube, namespace, runner, tmp_path):
    for service in ("job-a-master-0", "job-a"):  # as Kubeflow names a master's Service, and JobSet its headless one
        client.CoreV1Api(kube).create_namespaced_service(namespace, {"metadata": {"name": service}, "spec": {"ports": [{"port": 23456}]}})
    script = "import json, os, sys; json.dump({k: os.environ[k] for k in sys.argv[2:]}, open(sys.argv[1], 'w'))"
    keys = ["MASTER_ADDR", "FQDN", "HOST_IN_SUBDOMAIN", "OTHER", "JOB", "MASTER_PORT", "PET_MASTER_PORT"]
    env = [{"name": "MASTER_ADDR", "value": "job-a-master-0"}, {"name": "FQDN", "value": f"job-a-master-0.{namespace}.svc.cluster.local"},
           {"name": "HOST_IN_SUBDOMAIN", "value": "node-0-0.job-a-master-0"}, {"name": "OTHER", "value": "not-a-service"},
           {"name": "JOB", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_LABEL}']"}}},
           {"name": "MASTER_PORT", "value": "23456"}, {"name": "PET_MASTER_PORT", "value": "23456"}]
    for name, job in (("a-0", "job-a"), ("a-1", "job-a"), ("b-0", "job-b")):
        create(kube, namespace, pod(name, container(script, str(tmp_path / f"{name}.json"), *keys, env=env), labels={JOB_LABEL: job}))
    seen = {}
    for name in ("a-0", "a-1", "b-0"):
        wait_phase(kube, namespace, name, "Succeeded")
        seen[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for name in ("a-0", "a-1"):
        assert {k: seen[name][k] for k in keys[:5]} == {"MASTER_ADDR": "127.0.0.1", "FQDN": "127.0.0.1", "HOST_IN_SUBDOMAIN": "127.0.0.1",
                                                         "OTHER": "not-a-service", "JOB": "job-a"}, "a label's value is no address"
    ports = {name: seen[name]["MASTER_PORT"] for name in seen}
    assert ports["a-0"] == ports["a-1"] == seen["a-0"]["PET_MASTER_PORT"], "one rendezvous port per job"
    assert ports["a-0"] != ports["b-0"] and seen["b-0"]["PET_MASTER_PORT"] == ports["b-0"]


def test_a_service_made_a_moment_before_its_pod_and_the_pods_own_subdomain_are_loopback(kube, namespace, runner, tmp_path):
    """The runner keeps Service lists for seconds; a name missing from a list that old is looked up again, and a
    pod's own subdomain (its headless Service, which JobSet may create after the pod) always counts."""
    script = "import json, os, sys; json.dump({k: os.environ[k] for k in ('EARLY', 'LATE', 'OWN')}, open(sys.argv[1], 'w'))"
    env = [{"name": "EARLY", "value": "early-svc"}, {"name": "LATE", "value": "late-svc"}, {"name": "OWN", "value": "node-0-0.own-subdomain"}]
    client.CoreV1Api(kube).create_namespaced_service(namespace, {"metadata": {"name": "early-svc"}, "spec": {"ports": [{"port": 1}]}})
    create(kube, namespace, pod("first", container(script, str(tmp_path / "first.json"), env=env)))
    wait_phase(kube, namespace, "first", "Succeeded")  # the runner has listed the Services: early-svc only
    client.CoreV1Api(kube).create_namespaced_service(namespace, {"metadata": {"name": "late-svc"}, "spec": {"ports": [{"port": 1}]}})
    create(kube, namespace, pod("second", container(script, str(tmp_path / "second.json"), env=env), subdomain="own-subdomain"))
    wait_phase(kube, namespace, "second", "Succeeded")
    first, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("first", "second"))
    assert first == {"EARLY": "127.0.0.1", "LATE": "late-svc", "OWN": "node-0-0.own-subdomain"}
    assert second == {"EARLY": "127.0.0.1", "LATE": "127.0.0.1", "OWN": "127.0.0.1"}


def test_a_job_waits_for_cpu_and_is_bound_whole(kube, namespace, runner, tmp_path):
    release = tmp_path / "release"
    hold = container(f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.1)", resources={"requests": {"cpu": "1"}})
    quick = container("pass", resources={"requests": {"cpu": "1"}})
    for name in ("a-0", "a-1"):
        create(kube, namespace, pod(name, hold, labels={JOB_LABEL: "gang-a"}))
    for name in ("a-0", "a-1"):
        wait_phase(kube, namespace, name, "Running")
    for name in ("b-0", "b-1"):
        create(kube, namespace, pod(name, quick, labels={JOB_LABEL: "gang-b"}))
    time.sleep(2)  # ten polls
    for name in ("b-0", "b-1"):
        p = read(kube, namespace, name)
        assert not p["spec"].get("nodeName") and p["status"]["phase"] == "Pending", "2 CPUs are in use: gang-b waits"
    release.touch()
    a_done = max(state(wait_phase(kube, namespace, n, "Succeeded"))["terminated"]["finishedAt"] for n in ("a-0", "a-1"))
    for name in ("b-0", "b-1"):
        p = wait_phase(kube, namespace, name, "Succeeded")
        scheduled = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
        assert p["spec"]["nodeName"] == runner.node_name and scheduled["lastTransitionTime"] >= a_done


def test_deleting_a_pod_kills_its_processes_and_removes_it(kube, namespace, runner, tmp_path):
    psutil = pytest.importorskip("psutil")
    script = """
import os, signal, subprocess, sys, time
if sys.argv[2] == 'stubborn':
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(['sleep', '600'])
open(sys.argv[1] + '.tmp', 'w').write(f"{child.pid} {os.environ['GRADATIM_METRICS_PORT']} {os.environ['GRADATIM_METRICS_FINAL_SCRAPE_SECONDS']}")
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
time.sleep(600)
"""
    kubeflow = {JOB_LABEL: "train", "training.kubeflow.org/replica-type": "Master", "training.kubeflow.org/replica-index": "0"}
    # Deleted with the default grace period, with 1 s while ignoring SIGTERM, and forced (gone at once from the API).
    for name, grace in (("polite", None), ("stubborn", 1), ("forced", 0)):
        labels = kubeflow if name == "polite" else {}
        create(kube, namespace, pod(name, container(script, str(tmp_path / name), name, ports=[{"name": "metrics", "containerPort": 9090}]),
                                    labels=labels))
        p = wait(kube, namespace, name, lambda p: p["status"].get("phase") == "Running" and (tmp_path / name).exists(), "Running")
        child, port, final_scrape = (tmp_path / name).read_text().split()
        pids = [int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("gradatim://")), int(child)]
        targets = json.loads((tmp_path / "sd" / f"pod_{namespace}_{name}.json").read_text())
        expected = {"namespace": namespace, "pod": name}
        if labels:
            expected.update(pytorchjob="train", replica_type="master", replica_index="0")
        assert targets == [{"targets": [f"127.0.0.1:{port}"], "labels": expected}] and final_scrape == "5"
        started = time.monotonic()
        client.CoreV1Api(kube).delete_namespaced_pod(name, namespace, grace_period_seconds=grace)
        deadline = started + 30
        while time.monotonic() < deadline:
            try:
                read(kube, namespace, name)
            except ApiException as err:
                assert err.status == 404
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{name} was never removed")

        def ended() -> bool:
            running = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
            return not running and not (tmp_path / "sd" / f"pod_{namespace}_{name}.json").exists()

        while grace == 0 and not ended() and time.monotonic() < deadline:  # a forced deletion does not wait for the node
            time.sleep(0.2)
        assert ended(), f"{name}: its processes (or its metrics target) outlived it"
        if grace:
            assert time.monotonic() - started >= grace, "SIGTERM ignored: killed after the grace period"


def test_a_running_pod_the_runner_does_not_know_is_failed(kube, namespace, tmp_path):
    r = PodRunner(kube, tmp_path / "pods", namespace, cpus=2, node_name=node_for(namespace))  # not started: one step at a time
    create(kube, namespace, pod("orphan", container("import time; time.sleep(600)"), nodeName=r.node_name))
    client.CoreV1Api(kube).patch_namespaced_pod_status("orphan", namespace, {"status": {"phase": "Running"}})
    r.step()  # as a runner that restarted finds the pods the last one ran
    p = read(kube, namespace, "orphan")
    terminated = state(p)["terminated"]
    assert p["status"]["phase"] == "Failed" and terminated["reason"] == "Error" and terminated["message"] == LOST_MESSAGE
    assert not r.pods and not (tmp_path / "pods" / namespace / "orphan").exists(), "nothing was started"


def test_a_pod_whose_node_selector_this_node_lacks_is_left_for_another(kube, namespace, tmp_path):
    """The namespace's selector (PodNodeSelector) names this runner's node; `disktype: ssd` is one it lacks."""
    r = PodRunner(kube, tmp_path / "pods", namespace, cpus=2, node_name=node_for(namespace))  # not started: one step
    create(kube, namespace, pod("ssd", container("pass"), nodeSelector={"disktype": "ssd"}))
    create(kube, namespace, pod("any", container("pass")))
    try:
        r.step()
        assert read(kube, namespace, "any")["spec"]["nodeName"] == r.node_name
        ssd = read(kube, namespace, "ssd")
        assert ssd["spec"]["nodeSelector"] == {"disktype": "ssd", "kubernetes.io/hostname": r.node_name} and not ssd["spec"].get("nodeName")
    finally:
        r.stop_all()


def test_argv_as_this_machine_runs_it(tmp_path):
    r = PodProcesses(tmp_path, sources=None, image_modules={"trainer:1": "tests.stand_in_ddp_probe"})
    torchrun = Container({"name": "c", "image": "trainer:1", "command": ["torchrun", "--nproc-per-node=$(N)", "-m", "gradatim.trainer"],
                          "args": ["--spec", "/etc/spec/stage.json"]}, {})
    assert r.argv(torchrun, {"N": "2"}, {"/etc/spec": tmp_path / "spec"}) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "tests.stand_in_ddp_probe", "--spec", str(tmp_path / "spec" / "stage.json")]
    python = Container({"name": "c", "image": "other", "command": ["python3", "-m", "gradatim.trainer", "/etc/spectre"]}, {})
    assert r.argv(python, {}, {"/etc/spec": tmp_path / "spec"}) == [sys.executable, "-m", "gradatim.trainer", "/etc/spectre"]


def test_what_a_kubelet_refuses_and_how_it_reads_specs():
    def spec(requests=None, limits=None) -> dict:
        return {"containers": [{"name": "c", "resources": {"requests": requests or {}, "limits": limits or {}}}]}

    assert admission_error(spec({"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"})) is None
    assert "requests.cpu must be less than or equal to limits.cpu" in admission_error(spec({"cpu": "3"}, {"cpu": "2"}))
    assert "requests.memory must be less than or equal to limits.memory" in admission_error(spec({"memory": "2Gi"}, {"memory": "1G"}))
    assert "limits.memory -1 must be greater than or equal to 0" in admission_error(spec(limits={"memory": "-1"}))
    assert "requests.cpu" in admission_error({"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "-100m"}}}], "containers": []})
    assert "invalid quantity" in admission_error(spec({"cpu": "lots"}))
    assert quantity("500m") == quantity("0.5") and quantity("1Ki") == 1024 and quantity("1e3") == 1000
    assert pod_cpu({"spec": {"containers": [{"resources": {"requests": {"cpu": "1500m"}}}, {"resources": {"limits": {"cpu": 2}}}],
                             "initContainers": [{"resources": {"requests": {"cpu": "4"}}}]}}) == 4.0
    assert expand("$(A)-$$(A)-$(B)-$(", {"A": "x"}) == "x-$(A)-$(B)-$("
