"""Synthetic indoor world: scenes, a torch ray-caster, templated spatial questions with exact answers.

`world.generate_scene(seed)`, `render.render(scenes, device=...)`, `questions.visible_objects`,
`questions.make_questions`. Sits beside the model layers; `core` never imports it.
"""
from .questions import SpatialQuestion, make_questions, visible_objects
from .world import Scene, SceneObject, WorldConfig, generate_scene

__all__ = ["Scene", "SceneObject", "SpatialQuestion", "WorldConfig", "generate_scene", "make_questions",
           "visible_objects"]
