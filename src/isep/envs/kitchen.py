"""`FrankaKitchen-v1` on current MuJoCo: gymnasium-robotics' `KitchenEnv`, its robot's joints read without
the check that fails from mujoco 3.12 on.

gymnasium-robotics (1.4.2) reads the Franka's 9 joints with `mujoco_utils.get_joint_qpos/qvel`, which
assert `model.jnt_type[j] in (mjtJoint.mjJNT_HINGE, mjtJoint.mjJNT_SLIDE)`. `model.jnt_type[j]` is a NumPy
int32, and from mujoco 3.12 on an `mjtJoint` no longer equals one (`mjtJoint.mjJNT_HINGE == np.int32(3)`
is False, `== 3` still True; on 3.11 both are True), so `in` fails on every hinge joint and building the
env stops with a bare AssertionError. Nothing else differs: with the assertions stripped (`python -O`)
the unmodified env runs on mujoco 4.0, and `tests/test_robotics.py` checks that this env gives the same
observations as that one, step for step.

isep builds Kitchen from `KitchenEnv` below (`kitchen_spec` swaps the entry point of a recorded spec);
no installed package is patched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium_robotics.envs.franka_kitchen.franka_env import FrankaRobot
from gymnasium_robotics.envs.franka_kitchen.kitchen_env import KitchenEnv as RoboticsKitchenEnv

ENTRY_POINT = "isep.envs.kitchen:KitchenEnv"
ROBOTICS_ENTRY_POINTS = (
    "gymnasium_robotics.envs.franka_kitchen:KitchenEnv",
    "gymnasium_robotics.envs.franka_kitchen.kitchen_env:KitchenEnv",
)


class _FrankaRobot(FrankaRobot):
    """The Franka of gymnasium-robotics, reading its hinge and slide joints directly."""

    def _get_obs(self) -> np.ndarray:
        # = FrankaRobot._get_obs, with `robot_get_obs` replaced: the robot's joints are all hinge or
        # slide joints, one qpos and one qvel entry each; the observation noise is drawn as there.
        names = [n for n in self.model_names.joint_names if n.startswith("robot")]
        robot_qpos = np.array([self.data.joint(n).qpos[0] for n in names])
        robot_qvel = np.array([self.data.joint(n).qvel[0] for n in names])
        robot_qpos += (
            self.robot_noise_ratio * self.robot_pos_noise_amp[:9]
            * self.np_random.uniform(low=-1.0, high=1.0, size=robot_qpos.shape)
        )
        robot_qvel += (
            self.robot_noise_ratio * self.robot_vel_noise_amp[:9]
            * self.np_random.uniform(low=-1.0, high=1.0, size=robot_qvel.shape)
        )
        self._last_robot_qpos = robot_qpos
        return np.concatenate((robot_qpos.copy(), robot_qvel.copy()))


class KitchenEnv(RoboticsKitchenEnv):
    """gymnasium-robotics' `KitchenEnv` (same arguments, same behaviour) whose robot is `_FrankaRobot`.

    `KitchenEnv.__init__` builds its `FrankaRobot` itself and reads it at once; assigning it to
    `robot_env` goes through the setter below, which makes it a `_FrankaRobot` before that first read.
    """

    @property
    def robot_env(self) -> FrankaRobot:
        return self._robot

    @robot_env.setter
    def robot_env(self, robot: FrankaRobot) -> None:
        robot.__class__ = _FrankaRobot
        self._robot = robot


def kitchen_spec(spec: EnvSpec) -> EnvSpec:
    """`spec` built from `KitchenEnv` above when it names gymnasium-robotics' Kitchen, else `spec` itself."""
    if spec.entry_point in ROBOTICS_ENTRY_POINTS:
        return dataclasses.replace(spec, entry_point=ENTRY_POINT)
    return spec
