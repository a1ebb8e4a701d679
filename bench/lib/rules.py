#!/usr/bin/env python3
"""Write the routes and shorthand authorization rules of the benchmark's rule targets.

Standard library only. The output is deterministic (a fixed seed): the same arguments give the
same bytes on every run and machine.

    rules.py --rules N --upstream URL [--routes R] [--summary]

prints a TOML fragment to append after the base hfgate config (whose route `bench`, path "/",
api generic, is the one measured):

  - R other routes (default 40) of an organisation's usual kinds: tgi / tei endpoints with a
    model, openai and router gateways, Hub mirrors, generic services. Every rule config of one run
    gets the same routes, so only the rule count differs between the rule targets.
  - N rules in [[allow]] / [[deny]] tables. The first five are the small rule set (N = 5):

      1. allow  groups=[bench] routes=[bench] actions=[read]   the only rule permitting the measured request
      2. deny   groups=[bench] routes=[bench] actions=[write]  applies to the route and group; not to GET
      3. allow  groups=[ml-research] models=[meta-llama/*, mistralai/*] actions=[infer]   every route
      4. deny   groups=[contractors] models=[acme/internal-*]                             every route
      5. allow  groups=[platform] routes=[hub-mirror] actions=[list, metadata, download]  another route

    The rest (N > 5) look like a large organisation's policy: most name other groups and other
    routes (filtered out by route), about 10 % name no route (so they are evaluated on route
    `bench` too), a few name route `bench` for other groups, a few name group `bench` on other
    routes or with models (a generic route names no model, so those never match), and a few name
    no group. The permitting rule stays the only one that matches: rules.py checks that with the
    contract's semantics before printing and exits non-zero otherwise.

With --summary, a one-line description of the set goes to stderr.
"""

import argparse
import random
import sys

SEED = 20261129
BENCH_GROUP, BENCH_ROUTE = "bench", "bench"

# The measured request: group "bench" (the token's groups claim), GET on the generic route "bench".
BENCH_REQUEST = {"groups": [BENCH_GROUP], "route": BENCH_ROUTE, "action": "read", "model": None}
# The refused one: the same request with groups = ["nobody"].
NOBODY_REQUEST = dict(BENCH_REQUEST, groups=["nobody"])

TEAMS = [
    "ml-research", "nlp", "vision", "speech", "multimodal", "recsys", "search", "ranking", "ads",
    "safety", "alignment", "eval", "red-team", "data-eng", "data-science", "analytics", "finance",
    "legal", "support", "sales-eng", "platform", "infra", "sre", "security", "mobile", "web",
    "growth", "pricing", "fraud", "risk", "payments", "identity", "docs", "devrel", "partners",
    "contractors", "interns", "research-interns", "labs", "robotics", "health", "bio", "climate",
    "education", "gaming", "media", "translation", "ocr", "code-assist", "agents",
]
SUFFIXES = ["", "-admins", "-readers", "-oncall", "-eu", "-us"]

MODEL_ORGS = {
    "meta-llama": ["Llama-3.1-8B-Instruct", "Llama-3.1-70B-Instruct", "Llama-3.2-3B-Instruct"],
    "mistralai": ["Mistral-7B-Instruct-v0.3", "Mixtral-8x7B-Instruct-v0.1"],
    "Qwen": ["Qwen2.5-7B-Instruct", "Qwen2.5-Coder-32B-Instruct", "Qwen2.5-72B-Instruct"],
    "google": ["gemma-2-9b-it", "gemma-2-27b-it"],
    "microsoft": ["Phi-3.5-mini-instruct"],
    "BAAI": ["bge-large-en-v1.5", "bge-m3"],
    "sentence-transformers": ["all-MiniLM-L6-v2", "all-mpnet-base-v2"],
    "intfloat": ["multilingual-e5-large"],
    "openai": ["whisper-large-v3"],
    "acme": ["internal-chat-v2", "internal-embed-v1", "support-bot", "fraud-scorer"],
}
MODEL_ACTIONS = ["infer", "embed", "list", "metadata", "download"]
GENERIC_ACTIONS = ["read", "write"]


def glob_match(pattern: str, text: str) -> bool:
    """'*' matches any run of characters (including '/'); everything else is literal."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    if not text.startswith(parts[0]) or not text.endswith(parts[-1]):
        return False
    pos, end = len(parts[0]), len(text) - len(parts[-1])
    for part in parts[1:-1]:
        found = text.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return pos <= end


def matches(rule: dict, request: dict) -> bool:
    """The contract: a missing key means any; `models` only matches requests that name a model."""
    if "groups" in rule and not set(rule["groups"]) & set(request["groups"]):
        return False
    if "routes" in rule and request["route"] not in rule["routes"]:
        return False
    if "actions" in rule and request["action"] not in rule["actions"]:
        return False
    if "models" in rule:
        model = request["model"]
        if model is None or not any(glob_match(p, model) for p in rule["models"]):
            return False
    return True


def applies_to_route(rule: dict, route: str) -> bool:
    return "routes" not in rule or route in rule["routes"]


def make_routes(count: int, rng: random.Random):
    """Other routes (name, path, api, model); names are unique and never 'bench'."""
    routes = [("hub-mirror", "/hub/", "hub", None)]
    kinds = ["tgi", "tgi", "tgi", "tei", "openai", "router", "generic", "generic", "hub"]
    embedders = {"BAAI", "sentence-transformers", "intfloat"}
    families = {
        "tgi": [(o, n) for o, names in MODEL_ORGS.items() if o not in embedders for n in names],
        "tei": [(o, n) for o, names in MODEL_ORGS.items() if o in embedders for n in names],
    }
    used = {"hub-mirror", BENCH_ROUTE}
    while len(routes) < count:
        api = rng.choice(kinds)
        env = rng.choice(["", "-staging", "-eu", "-canary"])
        if api in ("tgi", "tei"):
            org, name = rng.choice(families[api])
            base = name.lower().replace(".", "-")
            model = f"{org}/{name}"
        elif api in ("openai", "router"):
            base, model = rng.choice(["chat-gateway", "llm-router", "providers", "completions"]), None
        elif api == "hub":
            base, model = rng.choice(["hub-cache", "model-mirror", "datasets-mirror"]), None
        else:
            base, model = rng.choice(["feature-store", "vector-db", "labeling", "eval-service",
                                      "batch-jobs", "tracking", "notebooks"]), None
        name = f"{base}{env}"
        if name in used:
            name = f"{name}-{len(routes)}"
        used.add(name)
        routes.append((name, f"/{name}/", api, model))
    return routes


def core_rules():
    return [
        ("allow", {"groups": [BENCH_GROUP], "routes": [BENCH_ROUTE], "actions": ["read"]}),
        ("deny", {"groups": [BENCH_GROUP], "routes": [BENCH_ROUTE], "actions": ["write"]}),
        ("allow", {"groups": ["ml-research"], "models": ["meta-llama/*", "mistralai/*"], "actions": ["infer"]}),
        ("deny", {"groups": ["contractors"], "models": ["acme/internal-*"]}),
        ("allow", {"groups": ["platform"], "routes": ["hub-mirror"], "actions": ["list", "metadata", "download"]}),
    ]


def random_models(rng: random.Random):
    org = rng.choice(list(MODEL_ORGS))
    shape = rng.random()
    if shape < 0.5:
        return [f"{org}/*"]
    if shape < 0.8:
        name = rng.choice(MODEL_ORGS[org])
        return [f"{org}/{name.split('-')[0]}-*"]
    return [f"{org}/{n}" for n in rng.sample(MODEL_ORGS[org], k=min(2, len(MODEL_ORGS[org])))]


def extra_rules(count: int, routes, rng: random.Random):
    groups = [t + s for t in TEAMS for s in SUFFIXES]
    route_names = [r[0] for r in routes]
    api_of = {r[0]: r[2] for r in routes}
    out = []
    # A few near misses for the benchmark's own group and route (never a permit of GET on bench).
    near = [
        ("allow", {"groups": [BENCH_GROUP], "models": ["acme/*"], "actions": ["read", "infer"]}),
        ("allow", {"groups": [BENCH_GROUP], "routes": rng.sample(route_names, 2)}),
        ("deny", {"groups": [BENCH_GROUP, "interns"], "models": ["acme/internal-*"]}),
        ("deny", {"routes": [BENCH_ROUTE], "actions": ["write"]}),
        ("allow", {"groups": ["sre", "platform"], "routes": [BENCH_ROUTE], "actions": ["read", "write"]}),
    ]
    out += near[:count]
    while len(out) < count:
        roll = rng.random()
        effect = "deny" if rng.random() < 0.12 else "allow"
        rule = {}
        if roll < 0.03 and effect == "allow":
            # No group: anyone may use one other route (e.g. a public listing).
            rule["routes"] = [rng.choice(route_names)]
            rule["actions"] = rng.sample(["list", "metadata", "read"], k=1)
        elif roll < 0.05:
            # No group, no route: an organisation-wide deny of one model (withdrawn, or weights
            # that must not leave), evaluated on every route.
            effect = "deny"
            org = rng.choice(list(MODEL_ORGS))
            rule["models"] = [f"{org}/{rng.choice(MODEL_ORGS[org])}"]
            if rng.random() < 0.5:
                rule["actions"] = ["download"]
        else:
            rule["groups"] = rng.sample(groups, k=rng.choice([1, 1, 1, 2, 3]))
            where = rng.random()
            if where < 0.10:
                pass  # every route
            elif where < 0.13:
                rule["routes"] = [BENCH_ROUTE] + ([rng.choice(route_names)] if rng.random() < 0.5 else [])
            else:
                rule["routes"] = rng.sample(route_names, k=rng.choice([1, 1, 2, 3]))
            kinds = {api_of.get(r, "generic") for r in rule.get("routes", [])}
            model_routes = not kinds or kinds - {"generic"}
            if model_routes and rng.random() < 0.6:
                rule["models"] = random_models(rng)
            if rng.random() < 0.7:
                pool = MODEL_ACTIONS + GENERIC_ACTIONS if model_routes else GENERIC_ACTIONS
                rule["actions"] = sorted(rng.sample(pool, k=rng.choice([1, 1, 2])))
        if effect == "deny" and "groups" not in rule and "models" not in rule:
            rule["actions"] = ["write"]  # an ungrouped deny never touches reads
        out.append((effect, rule))
    return out


def build(count: int, route_count: int):
    rng = random.Random(SEED)
    routes = make_routes(route_count, rng)
    core = core_rules()
    if count < len(core):
        sys.exit(f"rules.py: --rules must be at least {len(core)}")
    rules = core[1:] + extra_rules(count - len(core), routes, rng)
    # The permitting rule sits in the middle, so no first-match shortcut can make it cheap.
    rules.insert(len(rules) // 2, core[0])
    return routes, rules


def check(rules):
    permits = [i for i, (e, r) in enumerate(rules) if e == "allow" and matches(r, BENCH_REQUEST)]
    forbids = [i for i, (e, r) in enumerate(rules) if e == "deny" and matches(r, BENCH_REQUEST)]
    nobody = [i for i, (e, r) in enumerate(rules) if e == "allow" and matches(r, NOBODY_REQUEST)]
    if len(permits) != 1 or forbids or nobody:
        sys.exit(f"rules.py: generated set is wrong: permits {permits}, forbids {forbids}, nobody permitted by {nobody}")


def toml_list(values):
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def render(routes, rules, upstream: str) -> str:
    lines = [f"# Generated by bench/lib/rules.py: {len(routes)} more routes, {len(rules)} rules (seed {SEED}).", ""]
    for name, path, api, model in routes:
        lines += ["[[route]]", f'name = "{name}"', f'path = "{path}"', f'upstream = "{upstream}"', f'api = "{api}"']
        if model:
            lines.append(f'model = "{model}"')
        lines += ['credential = "none"', "strip_prefix = true", ""]
    for effect, rule in rules:
        lines.append(f"[[{effect}]]")
        for key in ("groups", "routes", "models", "actions"):
            if key in rule:
                lines.append(f"{key} = {toml_list(rule[key])}")
        lines.append("")
    return "\n".join(lines)


def summary(rules) -> str:
    on_route = [r for _, r in rules if applies_to_route(r, BENCH_ROUTE)]
    with_group = [r for r in on_route if "groups" not in r or BENCH_GROUP in r["groups"]]
    denies = sum(1 for e, _ in rules if e == "deny")
    return (f"{len(rules)} rules ({denies} deny): {len(on_route)} can apply to route {BENCH_ROUTE} "
            f"(no routes or naming it), {len(with_group)} of those also to group {BENCH_GROUP}; "
            f"1 permits the measured request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, required=True, help="number of rules (>= 5)")
    parser.add_argument("--routes", type=int, default=40, help="number of routes besides 'bench' (default 40)")
    parser.add_argument("--upstream", required=True, help="upstream URL of the generated routes")
    parser.add_argument("--summary", action="store_true", help="describe the set on stderr")
    args = parser.parse_args()
    if args.routes < 1:
        sys.exit("rules.py: --routes must be at least 1")
    routes, rules = build(args.rules, args.routes)
    check(rules)
    sys.stdout.write(render(routes, rules, args.upstream))
    if args.summary:
        print(summary(rules), file=sys.stderr)


if __name__ == "__main__":
    main()
