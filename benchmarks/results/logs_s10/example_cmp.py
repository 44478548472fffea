"""Side by side, one process, alternating rounds: JAX's own Mosaic GPU flash attention example
(jax.experimental.pallas.ops.gpu.attention_mgpu, f16 only), our hopper_attention (f16 and
bf16, default configs) and cuDNN (f16, bf16): forward only (the example has no causal
backward). `--dump DIR` instead compiles the dense 4k forward of the example and of ours
(f16) with Mosaic GPU's dumps on, one child process each."""
import argparse, json, os, subprocess, sys
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

CELLS = {"dense1k": ("dense", 16, 1024), "dense4k": ("dense", 4, 4096),
         "dense16k": ("dense", 1, 16384), "causal4k": ("causal", 4, 4096),
         "causal16k": ("causal", 1, 16384)}


def fns(kind, dtype):
  import jax
  from jax.experimental.pallas.ops.gpu import attention_mgpu as ex
  from pallas_kernels.hopper_attention import hopper_attention
  causal = kind == "causal"
  cfg = ex.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2, causal=causal)
  out = {
      "ours": lambda q, k, v: hopper_attention(q, k, v, is_causal=causal, scale=1.0),
      "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, scale=1.0,
                                                            implementation="cudnn"),
  }
  if dtype == "float16":
    out["example"] = lambda q, k, v: ex.attention(q, k, v, cfg)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--cells", default=",".join(CELLS))
  ap.add_argument("--dump", default=None)
  ap.add_argument("--child", default=None)
  ap.add_argument("--out", default=None)
  a = ap.parse_args()
  import jax, jax.numpy as jnp
  from bench_common import time_call
  from bench_hopper import inputs
  if a.child:
    kind, B, S = CELLS["dense4k"]
    q, k, v, _ = inputs(B, S, jnp.float16)
    jax.jit(fns(kind, "float16")[a.child]).lower(q, k, v).compile()
    return
  if a.dump:
    for impl in ("example", "ours"):
      env = dict(os.environ, MOSAIC_GPU_DUMP_PTXAS="1",
                 MOSAIC_GPU_DUMP_TO=os.path.join(a.dump, impl))
      os.makedirs(env["MOSAIC_GPU_DUMP_TO"], exist_ok=True)
      r = subprocess.run([sys.executable, __file__, "--child", impl], env=env,
                         capture_output=True, text=True)
      print(impl, r.returncode, "\n".join(l for l in (r.stdout + r.stderr).splitlines()
                                           if "regist" in l or "spill" in l or "rror" in l)[-3000:])
    return
  res = {}
  cells = a.cells.split(",")
  for cell in cells:
    kind, B, S = CELLS[cell]
    for dt in ("float16", "bfloat16"):
      q, k, v, _ = inputs(B, S, getattr(jnp, dt))
      f = fns(kind, dt)
      outs = {n: jax.jit(fn)(q, k, v) for n, fn in f.items()}
      ref = outs["cudnn"].astype(jnp.float32)
      for n, o in outs.items():
        err = float(jnp.max(jnp.abs(o.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
        print(f"{cell} {dt} {n}: max rel err vs cudnn {err:.2e}", flush=True)
  flops = lambda kind, B, S: 4 * B * 16 * 128 * S * S / (2 if kind == "causal" else 1)
  for r in range(a.rounds):
    for cell in cells:
      kind, B, S = CELLS[cell]
      for dt in ("float16", "bfloat16"):
        q, k, v, _ = inputs(B, S, getattr(jnp, dt))
        for n, fn in fns(kind, dt).items():
          t = time_call(jax.jit(fn), (q, k, v), 15)
          res.setdefault(f"{cell}/{dt}/{n}", []).append(t)
          print(f"round {r} {cell} {dt} {n}: {t*1e3:.4f} ms {flops(kind, B, S)/t/1e12:.0f} TF/s",
                flush=True)
  import statistics
  summary = {}
  for cell in cells:
    kind, B, S = CELLS[cell]
    for dt in ("float16", "bfloat16"):
      med = {n: statistics.median(res[f"{cell}/{dt}/{n}"]) for n in fns(kind, dt)}
      tf = {n: flops(kind, B, S) / t / 1e12 for n, t in med.items()}
      summary[f"{cell}/{dt}"] = tf
      print(f"{cell:9s} {dt:8s} " + "  ".join(f"{n} {x:.0f}" for n, x in tf.items())
            + f"  ours/cudnn {tf['ours']/tf['cudnn']:.3f}"
            + (f"  example/cudnn {tf['example']/tf['cudnn']:.3f} ours/example "
               f"{tf['ours']/tf['example']:.3f}" if "example" in tf else ""), flush=True)
  if a.out:
    json.dump({"raw": res, "tflops": summary}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
  main()
