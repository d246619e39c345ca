"""The xattr names filesystems keep for themselves: never read as a file's own, never copied,
compared or removed.

- **Lustre's.** Set on a Lustre target each costs a metadata-server RPC and is ignored (the
  MDT returns 0), and ``trusted.lmv`` with a user magic restripes a directory; off Lustre they
  are meaningless copies of the source's FIDs and link records. ``lustre.*`` is the client's
  synthetic view: the layout (``lustre.lov``) is meant to travel through the create path
  (:mod:`fsclone.fs.lustre.create`), never as an xattr; until that path is wired in, a layout
  is not carried at all (the target's default applies). The same names mpiFileUtils skips by
  default (``--xattrs non-lustre``).
- **XFS's ACLs under their on-disk names.** XFS lists a file's POSIX ACLs twice to root:
  as ``system.posix_acl_access``/``_default`` and as ``trusted.SGI_ACL_FILE``/``_DEFAULT``,
  the same ACL in XFS's own format. The ``system.*`` names carry the ACL; copying the
  ``trusted`` ones would put XFS's bytes on another filesystem as a stray xattr, and removing
  one from an XFS target (as "not in the source") would remove the ACL itself.
"""

from __future__ import annotations

_INTERNAL = frozenset({
    "trusted.lov", "trusted.lma", "trusted.link", "trusted.fid", "trusted.version",
    "trusted.som", "trusted.hsm", "trusted.lmv", "trusted.dmv",
    "trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT",
})
_INTERNAL_PREFIXES = ("lustre.", "trusted.lfsck_")
#: the names skipped, for a pass's profile (a trailing * stands for any rest)
SKIPPED = (*sorted(_INTERNAL), *(f"{prefix}*" for prefix in _INTERNAL_PREFIXES))


def is_internal(name: str) -> bool:
    """Whether xattr ``name`` is a filesystem's own (cheap: it runs for every xattr of every
    entry)."""
    return name in _INTERNAL or name.startswith(_INTERNAL_PREFIXES)
