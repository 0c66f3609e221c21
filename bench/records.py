"""Generated benchmark records: the mixes (``preparsed``, ``raw``, ``mixed``, ``ocsf``, ``sshd``),
the tag of each kind of record and the built-in rule the sink binds to it.

Records vary (addresses in the documentation ranges, users, paths, agents, ids, times), as real
logs do: one repeated record would let resend deduplication and Parquet's dictionary encoding
flatter the figures. A seed makes a run repeatable, so the sink and the in-process stages see the
same records.
"""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

Record = dict[str, Any]
Item = tuple[str, int, Record]  # (tag, event time in ns, record)
Maker = Callable[[random.Random, int], Record]  # (rng, event time in ms) → record

# Tag → built-in rule, in the order the sink config binds them. Tags not listed (ocsf.events)
# carry OCSF records, which the sink passes through after validating them.
MAPPINGS: Final[tuple[tuple[str, str], ...]] = (
    ("pre.sshd", "sshd"),
    ("pre.sudo", "sudo"),
    ("pre.nginx", "nginx_access"),
    ("pre.apache", "apache_access"),
    ("raw.sshd", "sshd"),
    ("raw.nginx", "nginx_access"),
    ("raw.auditd", "auditd"),
    ("aws.cloudtrail", "cloudtrail"),
    ("k8s.audit", "k8s_audit"),
)
# The tags whose records hold a raw line in ``log`` (the others are structured records).
RAW_TAGS: Final = frozenset({"raw.sshd", "raw.nginx", "raw.auditd"})
SPAN_MS: Final = 120_000  # a run's event times spread over the two minutes before its start
ACCOUNT: Final = "111122223333"

NETS = ("192.0.2", "198.51.100", "203.0.113")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
         "peggy", "trent", "victor", "walter", "deploy", "ubuntu", "ec2-user", "git", "jenkins", "backup")
BAD_USERS = ("admin", "root", "oracle", "postgres", "test", "user", "guest", "support", "ftpuser", "pi", "hadoop")
HOSTS = ("bastion-1", "bastion-2", "web-1", "web-2", "web-3", "db-1", "build-7", "mail-1")
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "curl/8.5.0", "python-requests/2.32.3", "Go-http-client/1.1", "okhttp/4.12.0", "kube-probe/1.29", "-",
)
PATHS = ("/", "/index.html", "/login", "/logout", "/api/v1/orders/{n}", "/api/v1/users/{n}/profile",
         "/static/js/app.{h}.js", "/static/css/site.{h}.css", "/images/products/{n}.jpg", "/search?q={w}&page={p}",
         "/cart/items/{n}", "/checkout?step={p}", "/health", "/robots.txt", "/favicon.ico", "/wp-login.php",
         "/.env", "/admin/", "/api/v2/session?next=%2Fdash")
WORDS = ("shoes", "laptop", "coffee", "garden", "lamp", "backpack", "tent", "monitor", "kettle", "chair")
REFERERS = ("-", "https://www.example.com/", "https://shop.example.com/cart", "https://www.example.com/search?q={w}")
METHODS = (("GET", 80), ("POST", 12), ("HEAD", 3), ("PUT", 2), ("DELETE", 2), ("OPTIONS", 1))
STATUSES = ((200, 68), (304, 8), (301, 3), (404, 10), (401, 3), (403, 2), (500, 2), (502, 1), (204, 3))
SSHD = (
    (20, "Accepted publickey for {user} from {ip} port {port} ssh2: ED25519 SHA256:{fp}"),
    (8, "Accepted password for {user} from {ip} port {port} ssh2"),
    (15, "Failed password for {user} from {ip} port {port} ssh2"),
    (20, "Failed password for invalid user {bad} from {ip} port {port} ssh2"),
    (10, "Invalid user {bad} from {ip} port {port}"),
    (10, "Disconnected from user {user} {ip} port {port}"),
    (8, "Connection closed by authenticating user {user} {ip} port {port} [preauth]"),
    (6, "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}  user={user}"),
    # carries no user: the sshd rule declines it and it becomes a dead letter, as in production
    (3, "Received disconnect from {ip} port {port}:11: Bye Bye [preauth]"),
)
COMMANDS = ("/usr/bin/systemctl restart nginx", "/usr/bin/apt-get upgrade -y", "/usr/bin/journalctl -u sshd",
            "/bin/cat /var/log/auth.log", "/usr/bin/docker ps", "/usr/bin/tail -f /var/log/syslog",
            "/usr/sbin/iptables -L -n", "/usr/bin/vim /etc/hosts")
EXES = (("curl", "/usr/bin/curl"), ("bash", "/usr/bin/bash"), ("python3", "/usr/bin/python3.11"),
        ("ssh", "/usr/bin/ssh"), ("tar", "/usr/bin/tar"), ("git", "/usr/bin/git"), ("nginx", "/usr/sbin/nginx"))
CLOUDTRAIL = (
    ("signin.amazonaws.com", "ConsoleLogin", 8),
    ("sts.amazonaws.com", "AssumeRole", 20),
    ("s3.amazonaws.com", "GetObject", 20),
    ("s3.amazonaws.com", "PutObject", 10),
    ("ec2.amazonaws.com", "DescribeInstances", 15),
    ("iam.amazonaws.com", "CreateAccessKey", 3),
    ("kms.amazonaws.com", "Decrypt", 14),
    ("lambda.amazonaws.com", "UpdateFunctionConfiguration20150331v2", 5),
    ("s3.amazonaws.com", "DeleteBucket", 5),
)
K8S_VERBS = (("get", 40), ("list", 25), ("watch", 15), ("create", 8), ("update", 5), ("patch", 4), ("delete", 3))
K8S_RESOURCES = ("pods", "secrets", "configmaps", "deployments", "services", "serviceaccounts")


def _ip(rng: random.Random) -> str:
    return f"{rng.choice(NETS)}.{rng.randint(1, 254)}"


def _weighted(rng: random.Random, pairs: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([value for value, _ in pairs], [weight for _, weight in pairs])[0]


def _rfc3164(ms: int) -> str:
    return time.strftime("%b %e %H:%M:%S", time.gmtime(ms // 1000))


def _clf(ms: int) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ms // 1000))


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _sshd_message(rng: random.Random) -> str:
    template = rng.choices([t for _, t in SSHD], [w for w, _ in SSHD])[0]
    fingerprint = base64.b64encode(rng.randbytes(32)).decode().rstrip("=")
    return template.format(user=rng.choice(USERS), bad=rng.choice(BAD_USERS), ip=_ip(rng),
                           port=rng.randint(1024, 65535), fp=fingerprint)


def _syslog_fields(rng: random.Random, ms: int, ident: str, message: str) -> Record:
    """What Fluent Bit's syslog-rfc3164 parser makes of a line (time kept as text)."""
    return {"time": _rfc3164(ms), "host": rng.choice(HOSTS), "ident": ident, "pid": str(rng.randint(300, 65000)),
            "message": message}


def _http(rng: random.Random) -> dict[str, str]:
    """One access-log request, with the field names of Fluent Bit's nginx and apache2 parsers."""
    path = rng.choice(PATHS).format(n=rng.randint(1, 99999), h=f"{rng.getrandbits(32):08x}", w=rng.choice(WORDS),
                                    p=rng.randint(1, 9))
    status = _weighted(rng, STATUSES)
    size = 0 if status in (204, 301, 304) else rng.randint(120, 250_000)
    user = rng.choice(USERS) if rng.random() < 0.1 else "-"
    return {"remote": _ip(rng), "user": user, "method": _weighted(rng, METHODS), "path": path, "code": str(status),
            "size": str(size), "referer": rng.choice(REFERERS).format(w=rng.choice(WORDS)),
            "agent": rng.choice(AGENTS)}


def pre_sshd(rng: random.Random, ms: int) -> Record:
    return _syslog_fields(rng, ms, "sshd", _sshd_message(rng))


def pre_sudo(rng: random.Random, ms: int) -> Record:
    user = rng.choice(USERS[:16])
    message = f"{user} : TTY=pts/{rng.randint(0, 9)} ; PWD=/home/{user} ; USER=root ; COMMAND={rng.choice(COMMANDS)}"
    if rng.random() < 0.05:
        message = message.replace(" : TTY", " : user NOT in sudoers ; TTY", 1)
    return _syslog_fields(rng, ms, "sudo", message)


def pre_nginx(rng: random.Random, ms: int) -> Record:
    http = _http(rng)
    return {"remote": http["remote"], "host": "-", **{k: v for k, v in http.items() if k != "remote"}}


def pre_apache(rng: random.Random, ms: int) -> Record:
    http = _http(rng)
    return {"host": http.pop("remote"), **http}


def raw_sshd(rng: random.Random, ms: int) -> Record:
    return {"log": f"{_rfc3164(ms)} {rng.choice(HOSTS)} sshd[{rng.randint(300, 65000)}]: {_sshd_message(rng)}"}


def raw_nginx(rng: random.Random, ms: int) -> Record:
    h = _http(rng)
    return {"log": f'{h["remote"]} - {h["user"]} [{_clf(ms)}] "{h["method"]} {h["path"]} HTTP/1.1" {h["code"]} '
                   f'{h["size"]} "{h["referer"]}" "{h["agent"]}"'}


def raw_auditd(rng: random.Random, ms: int) -> Record:
    # auditd with name_format=hostname starts each record with node=
    stamp = f"audit({ms // 1000}.{ms % 1000:03d}:{rng.randint(1000, 9_999_999)})"
    node = f"node={rng.choice(HOSTS)}.example.com"
    kind = rng.random()
    uid = rng.choice((0, 33, 1000, 1001, 1002))
    comm, exe = rng.choice(EXES)
    if kind < 0.45:
        args = " ".join(f"a{i}={rng.getrandbits(40):x}" for i in range(4))
        ids = " ".join(f"{name}={uid}" for name in ("uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid"))
        return {"log": f"{node} type=SYSCALL msg={stamp}: arch=c000003e syscall=59 success=yes exit=0 {args} items=2 "
                       f"ppid={rng.randint(2, 40000)} pid={rng.randint(2, 40000)} auid={uid} {ids} "
                       f'tty=pts{rng.randint(0, 9)} ses={rng.randint(1, 400)} comm="{comm}" exe="{exe}" '
                       'subj=unconfined key="exec_watch"'}
    if kind < 0.85:
        target = f"https://updates.example.com/pkg/{rng.getrandbits(24):06x}.tar.gz"
        return {"log": f'{node} type=EXECVE msg={stamp}: argc=3 a0="{comm}" a1="-s" a2="{target}"'}
    result = "success" if rng.random() < 0.7 else "failed"
    return {"log": f"{node} type=USER_AUTH msg={stamp}: pid={rng.randint(300, 65000)} uid=0 auid=4294967295 "
                   f"ses=4294967295 msg='op=PAM:authentication grantors=pam_unix acct=\"{rng.choice(USERS)}\" "
                   f"exe=\"/usr/sbin/sshd\" hostname={_ip(rng)} addr={_ip(rng)} terminal=ssh res={result}'"}


def _identity(rng: random.Random) -> Record:
    user = rng.choice(USERS)
    if rng.random() < 0.4:
        return {"type": "IAMUser", "principalId": f"AIDA{rng.getrandbits(64):016X}",
                "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}", "accountId": ACCOUNT, "userName": user}
    role = rng.choice(("ci-deployer", "ReadOnly", "lambda-exec", "Admin"))
    return {"type": "AssumedRole", "principalId": f"AROA{rng.getrandbits(64):016X}:{user}",
            "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{user}", "accountId": ACCOUNT,
            "sessionContext": {"sessionIssuer": {"type": "Role", "arn": f"arn:aws:iam::{ACCOUNT}:role/{role}",
                                                 "userName": role},
                               "attributes": {"creationDate": "2026-01-01T00:00:00Z", "mfaAuthenticated": "false"}}}


def cloudtrail(rng: random.Random, ms: int) -> Record:
    """One CloudTrail record as its own log record (Fluent Bit's json parser, Vector's parse_json)."""
    source, name, _ = rng.choices(CLOUDTRAIL, [w for _, _, w in CLOUDTRAIL])[0]
    internal = source in ("kms.amazonaws.com",) and rng.random() < 0.7
    record: Record = {
        "eventVersion": "1.09", "userIdentity": _identity(rng), "eventTime": _iso(ms)[:19] + "Z",
        "eventSource": source, "eventName": name, "awsRegion": rng.choice(("us-east-1", "eu-west-1", "ap-south-1")),
        "sourceIPAddress": "AWS Internal" if internal else _ip(rng),
        "userAgent": "AWS Internal" if internal else rng.choice(("aws-cli/2.17.0", "Boto3/1.34.0", AGENTS[1])),
        "requestParameters": {"bucketName": f"logs-{rng.randint(1, 9)}.example.com",
                              "key": f"app/{rng.getrandbits(32):08x}.json"} if source == "s3.amazonaws.com" else None,
        "responseElements": None, "eventID": _uuid(rng), "readOnly": name.startswith(("Get", "Describe", "Decrypt")),
        "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": ACCOUNT,
    }
    if name == "ConsoleLogin":
        outcome = "Success" if rng.random() < 0.8 else "Failure"
        record.update(eventType="AwsConsoleSignIn", responseElements={"ConsoleLogin": outcome},
                      additionalEventData={"MFAUsed": rng.choice(("Yes", "No"))})
        if outcome == "Failure":
            record["errorMessage"] = "Failed authentication"
    elif rng.random() < 0.05:
        record.update(errorCode="AccessDenied", errorMessage="User is not authorized to perform this operation")
    return record


def k8s_audit(rng: random.Random, ms: int) -> Record:
    verb, resource, namespace = _weighted(rng, K8S_VERBS), rng.choice(K8S_RESOURCES), rng.choice(("shop", "ci", "ops"))
    name = f"{resource[:-1]}-{rng.getrandbits(20):05x}"
    user = rng.choice((f"system:serviceaccount:{namespace}:deployer", f"{rng.choice(USERS)}@example.com",
                       "system:node:worker-1", "system:kube-controller-manager"))
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": _uuid(rng),
            "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/{namespace}/{resource}/{name}",
            "verb": verb, "user": {"username": user, "groups": ["system:authenticated"]},
            "sourceIPs": [_ip(rng)], "userAgent": "kubectl/v1.29.2 (linux/amd64) kubernetes/4b8e819",
            "objectRef": {"resource": resource, "namespace": namespace, "name": name, "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 403 if rng.random() < 0.05 else 200},
            "requestReceivedTimestamp": _iso(ms), "stageTimestamp": _iso(ms + 3)}


def ocsf_event(rng: random.Random, ms: int) -> Record:
    """An OCSF Authentication event as a shipper that maps itself sends it (class_uid present)."""
    success = rng.random() < 0.7
    return {"class_uid": 3002, "activity_id": 1, "severity_id": 1 if success else 3, "time": ms,
            "status_id": 1 if success else 2, "user": {"name": rng.choice(USERS), "type_id": 1},
            "src_endpoint": {"ip": _ip(rng), "port": rng.randint(1024, 65535)},
            "dst_endpoint": {"hostname": f"{rng.choice(HOSTS)}.example.com"},
            "auth_protocol_id": rng.choice((0, 1, 2)), "is_mfa": rng.random() < 0.5,
            "metadata": {"uid": _uuid(rng), "product": {"name": "idp-gateway", "vendor_name": "example"}}}


KINDS: Final[dict[str, Maker]] = {
    "pre.sshd": pre_sshd, "pre.sudo": pre_sudo, "pre.nginx": pre_nginx, "pre.apache": pre_apache,
    "raw.sshd": raw_sshd, "raw.nginx": raw_nginx, "raw.auditd": raw_auditd, "aws.cloudtrail": cloudtrail,
    "k8s.audit": k8s_audit, "ocsf.events": ocsf_event,
}
# Mix → (tag, weight): the share of each kind of record.
MIXES: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "preparsed": (("pre.sshd", 25), ("pre.nginx", 30), ("pre.sudo", 10), ("pre.apache", 15), ("aws.cloudtrail", 10),
                  ("k8s.audit", 10)),
    "raw": (("raw.sshd", 50), ("raw.nginx", 50)),
    "mixed": (("pre.sshd", 8), ("pre.nginx", 12), ("pre.sudo", 4), ("raw.sshd", 12), ("raw.nginx", 20),
              ("raw.auditd", 12), ("aws.cloudtrail", 12), ("ocsf.events", 20)),
    "ocsf": (("ocsf.events", 1),),
    "sshd": (("raw.sshd", 1),),
}


def generate(mix: str, count: int, start_ms: int, seed: int = 1) -> list[Item]:
    """``count`` records of ``mix``, event times rising from ``start_ms - SPAN_MS`` to ``start_ms``."""
    rng = random.Random(f"{mix}:{seed}")
    tags = [tag for tag, _ in MIXES[mix]]
    weights = [weight for _, weight in MIXES[mix]]
    items: list[Item] = []
    for i, tag in enumerate(rng.choices(tags, weights, k=count)):
        ms = start_ms - SPAN_MS + i * SPAN_MS // max(count, 1)
        items.append((tag, ms * 1_000_000, KINDS[tag](rng, ms)))
    return items


def as_line(tag: str, record: Record) -> str:
    """The record as a line in a log file: the raw line itself, or JSON for structured records."""
    return str(record["log"]) if tag in RAW_TAGS else json.dumps(record, separators=(",", ":"))
