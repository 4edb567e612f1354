"""Rigid transforms as 4x4 float64 homogeneous matrices (column vectors, mm).

Naming: ``T_<to>_from_<from>``; composition reads right to left:
``T_world_from_image = T_world_from_tool @ T_tool_from_image``.
Points are always ``(..., 3)`` arrays with coordinates last.
"""

from usnav.geometry.tracking import chain_local, global_from_tracking, local_from_global, local_from_tracking
from usnav.geometry.rigid import (
    apply,
    check_rigid,
    compose,
    euler_zyx_from_matrix,
    invert,
    is_rigid,
    matrix_from_euler_zyx,
    matrix_from_params,
    matrix_from_quaternion,
    params_from_matrix,
    quaternion_from_matrix,
    rotation_from_euler_zyx,
    translation_matrix,
)

__all__ = [
    "chain_local",
    "global_from_tracking",
    "local_from_global",
    "local_from_tracking",
    "apply",
    "check_rigid",
    "compose",
    "euler_zyx_from_matrix",
    "invert",
    "is_rigid",
    "matrix_from_euler_zyx",
    "matrix_from_params",
    "matrix_from_quaternion",
    "params_from_matrix",
    "quaternion_from_matrix",
    "rotation_from_euler_zyx",
    "translation_matrix",
]
