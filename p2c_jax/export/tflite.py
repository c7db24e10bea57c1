"""TensorFlow SavedModel and TFLite through ``jax2tf``, the route TensorFlow documents for JAX.

The SavedModel's ``serving_default`` signature takes ``input`` NHWC float32 ``[N,S,S,3]`` in
[-1,1] and returns ``{"output": [N,S,S,3]}``; the generator is one ``XlaCallModule`` (the
StableHLO of ``export.common.image_fn``, lowered for CPU, CUDA and TPU) over the weights
held as variables. TFLite is that SavedModel, lowered for CPU with a fixed batch, converted by
``tf.lite.TFLiteConverter`` to builtin ops only (no Flex delegate needed): with a symbolic
batch the converter stops at a ``dynamic_gather`` it does not support (docs/export.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from preprocessing.extras import needs

if TYPE_CHECKING:
    from flax import nnx

    from p2c_jax.nn.models import NetSpec

INPUT, OUTPUT = "input", "output"
SAVEDMODEL_PLATFORMS = ("cpu", "cuda", "tpu")


def _eval_staged(jaxpr, consts, *args) -> list:
    """Evaluate ``jaxpr`` with every sum over several axes done one axis at a time, last axis
    first, inlining the jitted and custom-JVP functions it calls (where ``jnp.mean`` lives)."""
    import jax.numpy as jnp
    from jax import lax
    from jax.extend import core

    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
        if eqn.primitive is lax.reduce_sum_p and len(eqn.params["axes"]) > 1:
            x = invals[0]
            for axis in sorted(eqn.params["axes"], reverse=True):
                x = jnp.sum(x, axis=axis)
            outs = [x]
        elif eqn.primitive.name in ("jit", "pjit", "custom_jvp_call") and sub is not None:
            closed = sub if isinstance(sub, core.ClosedJaxpr) else core.ClosedJaxpr(sub, ())
            outs = _eval_staged(closed.jaxpr, closed.consts, *invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def staged_sums(fn: Callable) -> Callable:
    """``fn`` (positional array arguments, one array out) with its sums over several axes
    staged, so a runtime that sums in one float32 pass adds 256 terms at a time, not 65,536:
    TFLite's ``MEAN`` over the 256 x 256 positions of an instance normalisation put the file
    1.6e-4 off our generator, outside the check; staged, it is within."""
    import jax

    def staged(*args):
        closed = jax.make_jaxpr(fn)(*args)
        return _eval_staged(closed.jaxpr, closed.consts, *jax.tree.leaves(args))[0]

    return staged


def _module(
    spec: NetSpec,
    state: nnx.State,
    batch: int | None,
    platforms: tuple[str, ...],
    stage: bool = False,
):
    """A ``tf.Module`` whose ``serve`` is the generator's image with ``state`` as variables
    (with ``stage``, its multi-axis sums staged: ``staged_sums``)."""
    import jax
    import tensorflow as tf
    from jax.experimental import jax2tf

    from p2c_jax.export.common import image_fn

    s = spec.img_size
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, state))

    def image(weights, x):
        return image_fn(spec, jax.tree.unflatten(treedef, weights))(x)

    image = staged_sums(image) if stage else image

    converted = jax2tf.convert(
        image,
        polymorphic_shapes=[None, f"(N, {s}, {s}, 3)" if batch is None else None],
        native_serialization_platforms=platforms,
        with_gradient=False,
    )
    module = tf.Module()
    module.weights = [tf.Variable(a, trainable=False) for a in leaves]
    module.serve = tf.function(
        lambda x: {OUTPUT: converted(module.weights, x)},
        input_signature=[tf.TensorSpec([batch, s, s, 3], tf.float32, name=INPUT)],
        autograph=False,
    )
    return module, module.serve.get_concrete_function()


def export_savedmodel(spec: NetSpec, state: nnx.State, dst: Path, batch: int | None) -> None:
    """Write a SavedModel directory (signature ``serving_default``) to ``dst``."""
    with needs("export", "SavedModel export"):
        import tensorflow as tf

    module, signature = _module(spec, state, batch, SAVEDMODEL_PLATFORMS)
    tf.saved_model.save(module, str(dst), signatures={"serving_default": signature})


def export_tflite(spec: NetSpec, state: nnx.State, dst: Path, batch: int) -> None:
    """Write a ``.tflite`` flatbuffer of batch ``batch`` to ``dst`` (builtin ops only)."""
    import tempfile

    with needs("export", "TFLite export"):
        import tensorflow as tf

    module, signature = _module(spec, state, batch, ("cpu",), stage=True)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": signature})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    Path(dst).write_bytes(flatbuffer)


def interpreter(path: Path):
    """LiteRT's interpreter (``ai-edge-litert``), else TensorFlow's deprecated one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with needs("export", "running a .tflite file (without ai-edge-litert)"):
            import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def tflite_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """NHWC numpy in, NHWC numpy out, through the ``serving_default`` signature runner."""
    run = interpreter(path).get_signature_runner("serving_default")
    return lambda x: run(**{INPUT: np.ascontiguousarray(x, np.float32)})[OUTPUT]


def savedmodel_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """NHWC numpy in, NHWC numpy out, through the SavedModel's ``serving_default``."""
    with needs("export", "running a SavedModel"):
        import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda x: serve(**{INPUT: tf.constant(x, tf.float32)})[OUTPUT].numpy()
