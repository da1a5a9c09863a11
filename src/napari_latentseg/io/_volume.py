"""The in-memory volume and its geometry conventions.

Conventions
-----------
Every reader in :mod:`napari_latentseg.io` returns a :class:`Volume` that follows the
same conventions, whatever the file format:

Array axes
    Arrays are in *reversed file index order*: axis 0 is the slice axis ``k``, axis 1
    the row ``j`` and axis 2 the column ``i``, i.e. ``data[k, j, i]``, exactly like
    ``SimpleITK.GetArrayFromImage``. 2D images are ``data[j, i]``.

World frame
    The patient frame LPS (x = towards the patient's Left, y = Posterior,
    z = Superior), in millimetres, as used by ITK, DICOM and NRRD
    (``left-posterior-superior``). NIfTI's RAS (and NRRD's
    ``right-anterior-superior``) is converted by negating x and y.

Geometry in array-axis order
    All geometry is stored in *array-axis order*, the reverse of ITK's x, y, z order,
    so that it can be handed to napari directly:

    ``spacing``
        One float per array axis, e.g. ``(sz, sy, sx)`` = ITK spacing reversed.
    ``origin``
        World position of voxel ``data[0, 0, 0]``, listed in reversed world order
        ``(z, y, x)`` (S, P, L) = ITK origin reversed.
    ``direction``
        ``ndim x ndim`` array equal to ITK's direction matrix with rows and columns
        reversed, ``D_itk[::-1, ::-1]``. Column ``a`` is the world direction (in z, y, x
        order) of array axis ``a``.

    A voxel index ``(k, j, i)`` then lies at the world point (z, y, x order)
    ``origin + direction @ (spacing * index)``, the same formula as ITK's, and napari's
    layer transform ``translate o rotate o scale`` reproduces it with
    ``scale=spacing, translate=origin, rotate=direction`` (see :meth:`Volume.layer_kwargs`).
    ``direction`` may contain a reflection (determinant -1, e.g. a y-flipped scan);
    napari accepts that as ``rotate``.

Single-slice inputs
    A single 2D DICOM image is returned as a 3D volume of shape ``(1, rows, cols)`` so
    that its position and orientation in space are kept. 2D NIfTI/NRRD files are kept
    2D when their plane is the z = 0 plane of the world (as ITK writes 2D images), and
    promoted to ``(1, j, i)`` otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Volume",
    "VolumeIOError",
    "affine_from_geometry",
    "describe_direction",
    "geometry_from_dict",
    "volume_from_itk_affine",
]

#: Tolerance used to decide that a direction matrix is the identity / a signed permutation.
DIRECTION_ATOL = 1e-6


class VolumeIOError(ValueError):
    """A volume could not be read or written.

    The message always names the file (or folder) and the problem.
    """


def _path_str(path: str | os.PathLike[str] | None) -> str:
    return "<memory>" if path is None else str(path)


@dataclass
class Volume:
    """A scalar 2D or 3D image with its physical geometry.

    See the module docstring of :mod:`napari_latentseg.io._volume` for the conventions.

    Parameters
    ----------
    data : numpy.ndarray
        The voxels, ``data[k, j, i]`` (or ``data[j, i]`` in 2D).
    spacing : tuple of float
        Voxel size along each array axis, in mm.
    origin : tuple of float
        World position (z, y, x order, LPS mm) of ``data[0, 0, 0]``.
    direction : numpy.ndarray
        ``ndim x ndim`` matrix whose column ``a`` is the world direction of array axis ``a``.
    metadata : dict
        JSON/YAML-friendly information about the source (see :func:`read_volume`).
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        nd = self.data.ndim
        if nd not in (2, 3):
            raise ValueError(f"Volume data must be 2D or 3D, got shape {self.data.shape}")
        self.spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=float).ravel())
        self.origin = tuple(float(o) for o in np.asarray(self.origin, dtype=float).ravel())
        self.direction = np.asarray(self.direction, dtype=float)
        if len(self.spacing) != nd or len(self.origin) != nd:
            raise ValueError(
                f"Volume of {nd} dimensions needs {nd} spacing and origin values, got "
                f"spacing={self.spacing}, origin={self.origin}"
            )
        if self.direction.shape != (nd, nd):
            raise ValueError(
                f"Volume of {nd} dimensions needs a {nd}x{nd} direction matrix, "
                f"got shape {self.direction.shape}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"Volume spacing must be finite and positive, got {self.spacing}")

    @property
    def ndim(self) -> int:
        """Number of array dimensions (2 or 3)."""
        return int(self.data.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the data array."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def affine(self) -> np.ndarray:
        """Homogeneous matrix mapping an array index to a world point (z, y, x order).

        Returns
        -------
        numpy.ndarray
            ``(ndim + 1) x (ndim + 1)``: ``[[direction * spacing, origin], [0, 1]]``.
        """
        return affine_from_geometry(self.spacing, self.origin, self.direction)

    def geometry(self) -> dict[str, list]:
        """Return the geometry as a JSON-serialisable dict.

        Returns
        -------
        dict
            ``{"spacing": [...], "origin": [...], "direction": [[...]], "shape": [...]}``,
            all in array-axis order; the inverse is :func:`geometry_from_dict`.
        """
        return {
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [[float(v) for v in row] for row in self.direction],
            "shape": [int(s) for s in self.data.shape],
        }

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a napari layer showing this volume in world space.

        Returns
        -------
        dict
            ``scale``, ``translate``, ``rotate`` (only when the direction is not the
            identity), ``metadata`` and ``name``.
        """
        kwargs: dict[str, Any] = {
            "scale": tuple(self.spacing),
            "translate": tuple(self.origin),
            "metadata": dict(self.metadata),
            "name": display_name(self.metadata),
        }
        if not np.allclose(self.direction, np.eye(self.ndim), atol=DIRECTION_ATOL):
            kwargs["rotate"] = np.array(self.direction)
        return kwargs


_KNOWN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".ima")


def check_same_grid(image: Volume, other: Volume, what: str = "annotations") -> None:
    """Refuse a volume that is not on ``image``'s grid (shape, spacing, origin, direction).

    Raises
    ------
    ValueError
        Saying what differs, in one line.
    """
    if other.data.shape != image.data.shape:
        raise ValueError(f"{what} have shape {other.data.shape} but the image has "
                         f"{image.data.shape}; they must be on the image's grid")
    for name in ("spacing", "origin"):
        a, b = np.asarray(getattr(image, name)), np.asarray(getattr(other, name))
        if not np.allclose(a, b, rtol=1e-3, atol=1e-2):
            raise ValueError(f"{what} have {name} {b.round(3).tolist()} but the image has "
                             f"{a.round(3).tolist()}; they must be on the image's grid")
    if not np.allclose(image.direction, other.direction, atol=1e-3):
        raise ValueError(f"{what} have another direction than the image; they must be on the "
                         "image's grid")


def strip_known_suffix(name: str) -> str:
    """Return ``name`` without a known medical-image extension (``.nii.gz`` etc.)."""
    low = name.lower()
    for suf in _KNOWN_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def display_name(metadata: dict[str, Any]) -> str:
    """Layer name derived from the metadata (file name, or folder and DICOM series)."""
    source = metadata.get("source_path")
    if not source:
        return "volume"
    base = strip_known_suffix(Path(source).name) or str(source)
    series = metadata.get("dicom_series")
    if isinstance(series, dict) and series.get("description"):
        return f"{base} - {series['description']}"
    return base


def affine_from_geometry(spacing: Sequence[float], origin: Sequence[float],
                         direction: np.ndarray) -> np.ndarray:
    """Homogeneous index-to-world matrix (z, y, x order): ``[[direction * spacing, origin],
    [0, 1]]`` (see :attr:`Volume.affine`)."""
    nd = len(spacing)
    out = np.eye(nd + 1)
    out[:nd, :nd] = np.asarray(direction, dtype=float) * np.asarray(spacing, dtype=float)[None, :]
    out[:nd, nd] = origin
    return out


def geometry_from_dict(
    d: dict[str, Any],
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """Inverse of :meth:`Volume.geometry`.

    Parameters
    ----------
    d : dict
        Mapping with ``spacing``, ``origin`` and ``direction`` (``shape`` is optional and
        ignored here), all in array-axis order.

    Returns
    -------
    spacing : tuple of float
    origin : tuple of float
    direction : numpy.ndarray

    Raises
    ------
    ValueError
        If a key is missing or the sizes do not agree.
    """
    if not isinstance(d, dict):
        raise ValueError(f"geometry must be a dict, got {type(d).__name__}")
    missing = [k for k in ("spacing", "origin", "direction") if k not in d]
    if missing:
        raise ValueError(f"geometry dict is missing {', '.join(missing)}: {d!r}")
    try:
        spacing = tuple(float(s) for s in np.asarray(d["spacing"], dtype=float).ravel())
        origin = tuple(float(o) for o in np.asarray(d["origin"], dtype=float).ravel())
        direction = np.asarray(d["direction"], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"geometry dict has non-numeric values: {exc}") from exc
    nd = len(spacing)
    if len(origin) != nd or direction.shape != (nd, nd):
        raise ValueError(
            f"geometry dict sizes disagree: {nd} spacing values, {len(origin)} origin "
            f"values, direction of shape {direction.shape}"
        )
    if "shape" in d and d["shape"] is not None and len(d["shape"]) != nd:
        raise ValueError(f"geometry dict shape {d['shape']} has not {nd} dimensions")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"geometry spacing must be finite and positive, got {spacing}")
    if not np.all(np.isfinite(direction)) or not all(math.isfinite(o) for o in origin):
        raise ValueError("geometry origin/direction contain non-finite values")
    return spacing, origin, direction


def describe_direction(direction: np.ndarray) -> str | None:
    """Describe a direction matrix in words (``None`` for the identity).

    Parameters
    ----------
    direction : numpy.ndarray
        Direction in array-axis order (columns = world directions of array axes).

    Returns
    -------
    str or None
        ``None`` for the identity; otherwise says whether it is a flip, an axis
        permutation (possibly with flips) or an oblique orientation.
    """
    d = np.asarray(direction, dtype=float)
    nd = d.shape[0]
    if np.allclose(d, np.eye(nd), atol=DIRECTION_ATOL):
        return None
    names = ("z", "y", "x")[-nd:]
    rounded = np.round(d)
    signed_perm = (
        np.allclose(d, rounded, atol=DIRECTION_ATOL)
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    if signed_perm:
        axes = []
        for a in range(nd):
            w = int(np.argmax(np.abs(rounded[:, a])))
            axes.append(("-" if rounded[w, a] < 0 else "+") + names[w])
        kind = "flip" if np.allclose(np.abs(rounded), np.eye(nd)) else "permutation"
        return f"{kind}: array axes ({', '.join(names)}) run along world {', '.join(axes)}"
    # oblique: largest angle between an axis and its closest world axis
    angles = [
        math.degrees(math.acos(min(1.0, float(np.max(np.abs(d[:, a])) / np.linalg.norm(d[:, a])))))
        for a in range(nd)
    ]
    return f"oblique: array axes are up to {max(angles):.1f} degrees off the world axes"


def volume_from_itk_affine(
    data: np.ndarray,
    matrix: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    *,
    metadata: dict[str, Any] | None = None,
) -> Volume:
    """Build a :class:`Volume` from an ITK-order LPS affine.

    Parameters
    ----------
    data : numpy.ndarray
        Array in reversed index order (``data[k, j, i]`` or ``data[j, i]``).
    matrix : numpy.ndarray
        ``4 x 4`` (or ``3 x 3`` for a purely 2D geometry) homogeneous matrix mapping the
        file index ``(i, j, k)`` to the LPS point ``(x, y, z)``. For 2D data with a 4x4
        matrix, the third column is the plane normal.
    path : path-like, optional
        Used in error messages.
    metadata : dict, optional
        Metadata to attach.

    Returns
    -------
    Volume
        2D data with a 4x4 matrix stays 2D when the plane is z = 0 with in-plane axes;
        otherwise it becomes ``(1, j, i)``.

    Raises
    ------
    VolumeIOError
        If the matrix is degenerate (a zero-length axis) or not finite.
    """
    m = np.asarray(matrix, dtype=float)
    sd = m.shape[0] - 1
    if not np.all(np.isfinite(m)):
        raise VolumeIOError(f"{_path_str(path)}: the voxel-to-world matrix is not finite: {m}")
    if data.ndim == 2 and sd == 3:
        lin = m[:3, :3]
        plane_in_xy = (
            abs(m[2, 3]) < 1e-9 and np.allclose(lin[2, :2], 0) and np.allclose(lin[:2, 2], 0)
        )
        if plane_in_xy:
            m = np.array(
                [[lin[0, 0], lin[0, 1], m[0, 3]], [lin[1, 0], lin[1, 1], m[1, 3]], [0, 0, 1]]
            )
            sd = 2
        else:
            data = data[None]
    if data.ndim != sd:
        raise VolumeIOError(
            f"{_path_str(path)}: {data.ndim}D data does not match a {sd}D voxel-to-world matrix"
        )
    lin = m[:sd, :sd]
    spacing_itk = np.linalg.norm(lin, axis=0)
    if np.any(spacing_itk <= 0):
        raise VolumeIOError(
            f"{_path_str(path)}: degenerate geometry, voxel axis of length 0 in {lin.tolist()}"
        )
    direction_itk = lin / spacing_itk[None, :]
    origin_itk = m[:sd, sd]
    return Volume(
        data=data,
        spacing=tuple(spacing_itk[::-1]),
        origin=tuple(origin_itk[::-1]),
        direction=direction_itk[::-1, ::-1].copy(),
        metadata=dict(metadata or {}),
    )


def itk_affine(
    spacing: tuple[float, ...], origin: tuple[float, ...], direction: np.ndarray
) -> np.ndarray:
    """ITK-order LPS matrix (index ``(i, j, k)`` -> ``(x, y, z)``) from array-order geometry."""
    sp = np.asarray(spacing, dtype=float)[::-1]
    org = np.asarray(origin, dtype=float)[::-1]
    dirn = np.asarray(direction, dtype=float)[::-1, ::-1]
    nd = sp.size
    out = np.eye(nd + 1)
    out[:nd, :nd] = dirn * sp[None, :]
    out[:nd, nd] = org
    return out
