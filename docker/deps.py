"""Print the requirements of this project for the given extras, one per line,
read from pyproject.toml alone (no package sources needed).

The image builds install these in a layer of their own before the sources are
copied in, so a source change does not reinstall (or re-download) torch:
    python3 docker/deps.py inference > /tmp/deps.txt
Self-references such as "loraplex[operator]" inside an extra are expanded.
"""

import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
name = re.sub(r"[-_.]+", "-", project["name"]).lower()
extras = project.get("optional-dependencies", {})
seen: set[str] = set()
out: list[str] = list(project.get("dependencies", []))


def add(extra: str) -> None:
    if extra in seen:
        return
    if extra not in extras:
        sys.exit(f"deps.py: pyproject.toml has no extra {extra!r} (has: {', '.join(sorted(extras))})")
    seen.add(extra)
    for req in extras[extra]:
        m = re.match(r"^\s*([A-Za-z0-9._-]+)\s*\[([^\]]*)\]\s*$", req)
        if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == name:
            for e in m.group(2).split(","):
                add(e.strip())
        else:
            out.append(req)


for extra in sys.argv[1:]:
    add(extra)
print("\n".join(dict.fromkeys(out)))
