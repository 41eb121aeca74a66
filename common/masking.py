"""What may be printed or stored: credentials in URLs and secret option values replaced by `***`.

Secrets in plans and env are typed (topology.plan.Secret, common.config.SecretRef) and render as `***`
by themselves; this module covers the untyped places a secret can still ride in: a URL with
`user:password@`, and a command line with `--api-key VALUE`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "***"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
SECRET_OPTIONS = ("--api-key", "--key", "--token", "--password")


def mask_url_credentials(text: str) -> str:
    """`http://user:pw@host/x` -> `http://***@host/x`, wherever URLs occur in `text`."""
    return _URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}{MASK}@", text)


def mask_command_line(argv: Sequence[str]) -> list[str]:
    """A command line as it may be stored: values of secret options and URL credentials masked."""
    masked: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        option, equals, _ = word.partition("=")
        if option in SECRET_OPTIONS:
            if equals:
                masked.append(f"{option}={MASK}")
            else:
                masked.append(word)
                hide_next = True
            continue
        masked.append(mask_url_credentials(word))
    return masked
