"""Container image audits and diffs, streamed from the image files (no daemon, no extraction).

* :func:`gates.image.audit.audit` - ``audit(image, policy) -> AuditReport``: sizes, layers with
  their history, largest paths, wasted bytes, GPU libraries, and the violations of an
  :class:`~gates.image.policy.AuditPolicy` (the model a rollout policy embeds as ``spec.image``);
* :func:`gates.image.diff.diff` - ``diff(a, b) -> ImageDiff``: layers, files, Debian packages,
  Python distributions and runtime config that changed;
* :mod:`gates.image.reader` - the three image forms (``oci-archive:``, ``docker-archive:``,
  ``oci:``) and :class:`~gates.image.reader.ImageError` (not an image: bad input);
* :mod:`gates.image.signing` - containers' simple signing of a manifest digest (``skopeo
  standalone-sign``/``standalone-verify``, gpg), offline; the lookaside signature layout.

What each check means and why: docs/images.md.
"""

from __future__ import annotations

from gates.image.audit import AuditReport, audit
from gates.image.diff import ImageDiff, diff
from gates.image.policy import CHECKS, AuditPolicy, CheckName, Violation
from gates.image.reader import ImageError, open_image, parse_ref

__all__ = [
    "CHECKS",
    "AuditPolicy",
    "AuditReport",
    "CheckName",
    "ImageDiff",
    "ImageError",
    "Violation",
    "audit",
    "diff",
    "open_image",
    "parse_ref",
]
