"""Benchmark TAVDiffusion sampling and training on one GPU against diffusers' own UNets (issue 18).

    python benchmarks/tav_diffusion.py --out benchmarks/results          # the H200 run
    python benchmarks/tav_diffusion.py --tiny --out /tmp/tav             # tiny widths, 2 steps, CPU

One clip: 16 frames of 256² video as SD-VAE latents [4, 16, 32, 32] and 2 s of audio as an AudioLDM
mel latent [8, 50, 16] (16 kHz, hop 160, 64 mels, /4 in both axes), text tokens [77, 768] (random;
no encoder is timed). Random weights everywhere (no weights exist here); inference: weights cast to
bf16, eval mode, torch.inference_mode, bf16 autocast; training: fp32 weights, bf16 autocast, AdamW.

Rows, all measured in this one run:
  peers    diffusers' default UNet3DConditionModel (cross_attention_dim 768) on the video latent and a
           139M UNet2DConditionModel (block_out_channels (128, 256, 384, 640), 8 channels) on the mel
           latent, each 40 guided DDIM steps (batch 2 = cond + uncond); an SD-1.5 AutoencoderKL
           decoding the 16 frames; their sum = two streams that never meet.
  ours     the two-stream UNet denoiser (video [320, 640, 1280, 1280], audio [128, 256, 384, 640],
           coupled at every level or at the bottleneck only) and the LightNet denoiser at about equal
           parameters (hidden 1536, 31 blocks, 32 × 48 heads, ffn 4096, patches [1, 2, 2] / [2, 2]),
           40 guided joint steps through `sample_latents` (DDIM; joint guidance, one batched pass
           over [cond; uncond] a step).
Each model eager, with its denoiser forward captured in one CUDA graph (torch.cuda.CUDAGraph over
the eager kernels: no compile time) and — in a child process with the time left, as it can take
minutes — with torch.compile(mode=--compile-mode) on the denoiser. Training: samples/s of one AdamW
step (forward + backward + step) on --train-batch clips at a random shared timestep.

Every timing is guarded by --row-budget seconds: a 40-step sample is timed whole (median of up to
2) when it fits, else a shorter run is timed and scaled to 40 steps (the table says which).
Results are rewritten after every row, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import time_ms, write_results  # noqa: E402
from mm.models.tavdiffusion.model import NoiseScheduleConfig, info_nce  # noqa: E402
from mm.models.tavdiffusion.sampling import SamplingConfig, build_scheduler, sample_latents  # noqa: E402

# (video latent (C, T, h, w), audio latent (C, F, M), text (L, D), pixels per latent side)
SIZES = {"reference": ((4, 16, 32, 32), (8, 50, 16), (77, 768), 8), "tiny": ((4, 2, 8, 8), (8, 8, 4), (7, 32), 2)}
GUIDANCE = 8.0
COLUMNS = ["row", "params (M)", "eager s/clip", "CUDA graph s/clip", "compiled s/clip", "compile s",
           "best s/clip + VAE decode", "train samples/s", "how timed"]


# -- the models --------------------------------------------------------------------------------
def build(name: str, tiny: bool, text_dim: int):
    """One model of the benchmark by row name, on the current default device, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel

    if name == "diffusers UNet3D (video)":
        if tiny:
            return UNet3DConditionModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                                        cross_attention_dim=text_dim, attention_head_dim=8)
        return UNet3DConditionModel(cross_attention_dim=text_dim)
    if name == "diffusers UNet2D (mel)":
        widths = (32, 64) if tiny else (128, 256, 384, 640)
        types = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")) if tiny else {}
        return UNet2DConditionModel(in_channels=8, out_channels=8, block_out_channels=widths,
                                    layers_per_block=1 if tiny else 2, norm_num_groups=8 if tiny else 32,
                                    cross_attention_dim=text_dim, **types)
    if name == "diffusers AutoencoderKL SD-1.5 (decode 16 frames)":
        widths = (32, 64) if tiny else (128, 256, 512, 512)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=widths,
                             down_block_types=("DownEncoderBlock2D",) * len(widths),
                             up_block_types=("UpDecoderBlock2D",) * len(widths), layers_per_block=1 if tiny else 2,
                             norm_num_groups=8 if tiny else 32)
    if name.startswith("ours UNet"):
        from mm.models.tavdiffusion.unet import UNetDenoiserConfig, build_unet_denoiser

        couple = ["all"] if name.endswith("all") else ["mid"]
        cfg = (UNetDenoiserConfig(channels=[32, 64], layers_per_block=1, heads=2, norm_groups=8, plain_levels=[1],
                                  couple_levels=couple, couple_heads=2) if tiny else
               UNetDenoiserConfig(channels=[320, 640, 1280, 1280], audio_channels_per_level=[128, 256, 384, 640],
                                  layers_per_block=2, heads=8, plain_levels=[3], norm_groups=32,
                                  couple_levels=couple, couple_heads=8))
        return build_unet_denoiser(cfg, text_dim=text_dim, video_channels=4, audio_channels=8)
    if name == "ours LightNet":
        from mm.models.tavdiffusion.lightnet_denoiser import LightNetDenoiserConfig, build_lightnet_denoiser

        size = (dict(hidden=48, layers=2, heads=2, head_dim=24, ffn=64) if tiny else
                dict(hidden=1536, layers=31, heads=32, head_dim=48, ffn=4096))
        cfg = LightNetDenoiserConfig(video_patch=[1, 2, 2], audio_patch=[2, 2], **size)
        return build_lightnet_denoiser(cfg, text_dim=text_dim, video_channels=4, audio_channels=8)
    raise ValueError(f"unknown row {name!r}")


PEERS = ("diffusers UNet3D (video)", "diffusers UNet2D (mel)")
VAE = "diffusers AutoencoderKL SD-1.5 (decode 16 frames)"
OURS = ("ours UNet, couple all", "ours UNet, couple mid", "ours LightNet")


def params_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# -- running them --------------------------------------------------------------------------------
class Graphed:
    """``fn(*tensors) -> tuple of tensors`` replayed from one CUDA graph: captured on the first call
    (after two warm-up calls on a side stream), later calls copy their inputs into the captured ones."""

    def __init__(self, fn):
        self.fn, self.graph = fn, None

    def __call__(self, *args):
        if self.graph is None:
            self.static = [a.clone() for a in args]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn(*self.static)
        for static, a in zip(self.static, args, strict=True):
            static.copy_(a)
        self.graph.replay()
        return self.out


def ours_fn(model, mask: bool = True):
    """The denoiser as (video, audio, t, text, text_mask) -> (video, audio); mask=False hands the
    denoiser text_mask=None (every token real: the same maths with an all-True mask)."""
    def fn(v, a, t, text, text_mask):
        out = model(v, a, t, text, text_mask if mask else None)
        return out.video, out.audio
    return fn


class _Model:
    """What `sample_latents` reads of a TAVDiffusion: the default noise schedule, random text tokens
    (fixed per call count) and the denoiser."""

    def __init__(self, fn, text_shape: tuple[int, int]):
        self.cfg = SimpleNamespace(schedule=NoiseScheduleConfig())
        self.fn, self.text_shape = fn, text_shape

    def encode_text(self, texts: list[str], device: torch.device):
        g = torch.Generator().manual_seed(0)
        tokens = torch.randn(len(texts), *self.text_shape, generator=g).to(device)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)

    def denoise(self, video, audio, t, text, text_mask, couple: bool = True):
        v, a = self.fn(video, audio, t, text, text_mask)
        return SimpleNamespace(video=v, audio=a)


def ours_sampler(fn, sizes, device):
    """steps -> one joint guided clip through `sample_latents`."""
    video, audio, text, _ = sizes
    model = _Model(fn, text)
    return lambda steps: sample_latents(model, ["a clip"], video, audio,
                                        SamplingConfig(steps=steps, guidance=GUIDANCE), device)


def peer_sampler(fn, shape, text_shape, device):
    """steps -> one guided DDIM sample of one stream with a diffusers UNet ``fn(x, t, text)``: the
    same scheduler and guidance as `sample_latents`, batch 2 = [cond; uncond]."""
    text = torch.randn(2, *text_shape, device=device)

    def run(steps: int):
        scheduler = build_scheduler("ddim", NoiseScheduleConfig().diffusers_kwargs())
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn(1, *shape, device=device)
        for t in scheduler.timesteps:
            cond, uncond = fn(torch.cat([x, x]), t.reshape(1).expand(2), text)[0].float().chunk(2)
            x = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, x).prev_sample
        return x
    return run


def unet_fn(unet):
    return lambda x, t, text: (unet(x, t, encoder_hidden_states=text).sample,)


def wall_s(fn, *args) -> float:
    sync()
    t0 = time.perf_counter()
    fn(*args)
    sync()
    return time.perf_counter() - t0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_sampling(run, steps: int, budget_s: float) -> tuple[float, str]:
    """Seconds per clip of ``run(steps)``: warm-up at 2 steps, a 5-step probe, then the whole run
    (median of up to 2) when it fits in ``budget_s``, else a shorter timed run scaled to ``steps``."""
    run(2)
    probe = min(5, steps)
    per_step = wall_s(run, probe) / probe
    n = min(2, int(budget_s // (per_step * steps)))
    if n >= 1:
        return statistics.median(wall_s(run, steps) for _ in range(n)), f"{n}× {steps} steps"
    k = max(probe, int(budget_s // per_step))
    return wall_s(run, k) / k * steps, f"{k} steps × {steps / k:.2g}"


def train_time(models, loss_fn, batch: int, budget_s: float, device) -> float:
    """Samples/s of one AdamW step (forward + backward + step) of ``loss_fn()`` over ``models``."""
    for m in models:
        m.train()
    opt = torch.optim.AdamW([p for m in models for p in m.parameters()], lr=1e-5,
                            fused=device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn()
        loss.backward()
        opt.step()

    first = wall_s(step)  # allocates the optimizer state
    repeat = max(1, min(5, int(budget_s // max(first, 1e-3))))
    return batch / (time_ms(step, warmup=1, repeat=repeat) / 1e3)


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False)


def train_inputs(sizes, batch, device):
    video, audio, text, _ = sizes
    g = torch.Generator().manual_seed(1)
    draw = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    return SimpleNamespace(v=draw(batch, *video), a=draw(batch, *audio), tv=draw(batch, *video),
                           ta=draw(batch, *audio), text=draw(batch, *text),
                           mask=torch.ones(batch, text[0], dtype=torch.bool, device=device),
                           t=torch.randint(0, 1000, (batch,), generator=g).to(device))


# -- the rows ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.sizes = SIZES["tiny" if args.tiny else "reference"]
        self.steps = args.steps or (2 if args.tiny else 40)
        self.rows = {name: {"row": name} for name in (*PEERS, VAE, "peers: two streams that never meet", *OURS)}
        self.infer_dtype = torch.bfloat16 if self.cuda else None  # inference weights (CPU: float32)
        self.notes: list[str] = []

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def new(self, name: str, dtype=None):
        with torch.device(self.device):
            model = build(name, self.args.tiny, self.sizes[2][1])
        model = model.to(dtype) if dtype is not None else model
        self.rows[name]["params (M)"] = params_m(model)
        return model

    def guarded(self, name: str, key: str, what):
        """Run ``what()`` -> value (or (value, how)) into rows[name][key]; an error or a spent budget
        becomes the cell's text instead of ending the run."""
        if self.left() < self.args.row_budget:
            self.rows[name][key] = "skipped (run budget)"
            return
        try:
            value = what()
        except Exception as e:  # noqa: BLE001 - the table records it; the other rows still run
            value = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            print(f"[{name}] {key}: {value}", flush=True)
        if isinstance(value, tuple):
            value, how = value
            self.rows[name]["how timed"] = "; ".join(filter(None, [self.rows[name].get("how timed"), f"{key}: {how}"]))
        self.rows[name][key] = value
        print(f"[{self.args.budget - self.left():6.1f} s] {name}: {key} = {value}", flush=True)
        self.write()

    def sample_rows(self, name: str, make_run) -> None:
        """Eager and CUDA-graph sampling of one model; make_run(graphed: bool) -> run(steps)."""
        budget = self.args.row_budget
        self.guarded(name, "eager s/clip", lambda: time_sampling(make_run(False), self.steps, budget))
        if self.cuda:
            self.guarded(name, "CUDA graph s/clip", lambda: time_sampling(make_run(True), self.steps, budget))

    # each model lives in one method call: it is freed when the call returns
    def peers(self) -> None:
        video, audio, text, _ = self.sizes
        for name, shape in zip(PEERS, (video, audio), strict=True):
            self.peer_stream(name, shape)
            self.free()
        self.vae_decode()
        self.free()

    def peer_stream(self, name: str, shape: tuple) -> None:
        unet = self.new(name, self.infer_dtype).eval()
        self.sample_rows(name, lambda graphed: peer_sampler(Graphed(unet_fn(unet)) if graphed else unet_fn(unet),
                                                            shape, self.sizes[2], self.device))

    def vae_decode(self) -> None:
        vae, (c, t, h, w) = self.new(VAE, self.infer_dtype).eval(), self.sizes[0]
        latents = torch.randn(t, c, h, w, device=self.device, dtype=self.infer_dtype)
        self.guarded(VAE, "eager s/clip", lambda: (time_ms(lambda: vae.decode(latents), warmup=1, repeat=3) / 1e3,
                                                   "median of 3 decodes"))

    def ours(self) -> None:
        self.notes.append("ours LightNet, CUDA graph and compiled: text_mask=None (all tokens real, as the mask "
                          "here) because the LightNet backbone reads the mask on the host (check_cond_mask: "
                          "bool(mask.any()), a sync a CUDA graph cannot capture).")
        for name in OURS:
            self.ours_stream(name)
            self.free()

    def ours_stream(self, name: str) -> None:
        model = self.new(name, self.infer_dtype).eval()
        mask = name != "ours LightNet"  # the LightNet graph gets no mask (the note); the UNet reads it on the device
        self.sample_rows(name, lambda graphed: ours_sampler(Graphed(ours_fn(model, mask)) if graphed
                                                            else ours_fn(model), self.sizes, self.device))

    def training(self) -> None:
        x = train_inputs(self.sizes, self.args.train_batch, self.device)
        for name in ("ours UNet, couple all", "ours LightNet"):
            self.guarded(name, "train samples/s", lambda name=name: self.train_ours(name, x))
            self.free()
        self.guarded("peers: two streams that never meet", "train samples/s", lambda: self.train_peers(x))
        self.free()

    def train_ours(self, name: str, x) -> float:
        model = self.new(name)

        def loss():
            out = model(x.v, x.a, x.t, x.text, x.mask)
            return (F.mse_loss(out.video.float(), x.tv) + F.mse_loss(out.audio.float(), x.ta)
                    + 0.1 * info_nce(out.video_feat, out.audio_feat, 0.1)[0])
        return train_time([model], loss, self.args.train_batch, self.args.row_budget, self.device)

    def train_peers(self, x) -> float:
        u3, u2 = self.new(PEERS[0]), self.new(PEERS[1])

        def loss():
            return (F.mse_loss(u3(x.v, x.t, encoder_hidden_states=x.text).sample.float(), x.tv)
                    + F.mse_loss(u2(x.a, x.t, encoder_hidden_states=x.text).sample.float(), x.ta))
        return train_time([u3, u2], loss, self.args.train_batch, self.args.row_budget, self.device)

    def compiled(self) -> None:
        """torch.compile rows, each in a child process given the time left (compiling can take minutes)."""
        for name in ("ours LightNet", "ours UNet, couple mid"):
            limit = min(self.left() - 15, self.args.compile_budget)
            if limit < 60:
                self.rows[name]["compiled s/clip"] = f"not run (run budget: {max(limit, 0):.0f} s left)"
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--compile-mode", self.args.compile_mode,
                   "--row-budget", str(self.args.row_budget), "--steps", str(self.steps)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("CHILD ")]
                if not lines:
                    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
                    raise RuntimeError(f"child exited {done.returncode}: {tail}")
                result = json.loads(lines[-1][6:])
            except subprocess.TimeoutExpired:
                result = {"compiled s/clip": f"not finished in {limit:.0f} s (killed)"}
            except Exception as e:  # noqa: BLE001
                result = {"compiled s/clip": f"failed: {e}"}
            how = result.pop("how", None)
            self.rows[name].update(result)
            if how:
                self.rows[name]["how timed"] = f"{self.rows[name].get('how timed', '')}; compiled: {how}"
            print(f"[{self.args.budget - self.left():6.1f} s] {name}: {result}", flush=True)
            self.write()

    def free(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()

    def summary(self) -> list[dict]:
        """Sums for the peers row, VAE decode added to the stream pairs, the issue's goals."""
        def best(row):
            vals = [row.get(k) for k in ("eager s/clip", "CUDA graph s/clip", "compiled s/clip")]
            vals = [v for v in vals if isinstance(v, float)]
            return min(vals) if vals else None
        vae = self.rows[VAE].get("eager s/clip")
        vae = vae if isinstance(vae, float) else 0.0
        peers = self.rows["peers: two streams that never meet"]
        a, b = (self.rows[n] for n in PEERS)
        if all(isinstance(r.get("params (M)"), float) for r in (a, b)):
            peers["params (M)"] = a["params (M)"] + b["params (M)"]
        for key in ("eager s/clip", "CUDA graph s/clip"):
            if all(isinstance(r.get(key), float) for r in (a, b)):
                peers[key] = a[key] + b[key]
        peers["how timed"] = "sum of the two rows above (+ VAE decode in 'best')"
        for row in (peers, *(self.rows[n] for n in OURS)):
            if best(row) is not None:
                row["best s/clip + VAE decode"] = best(row) + vae
        return list(self.rows.values())

    def write(self) -> str:
        rows = self.summary()
        ours = {n: self.rows[n].get("best s/clip + VAE decode") for n in OURS}
        goal = []
        coupled = [v for v in ours.values() if isinstance(v, float)]
        if coupled:
            goal.append(f"best coupled s/clip incl. VAE decode: {min(coupled):.3g} (goal <= 2 s: "
                        f"{'met' if min(coupled) <= 2 else 'NOT met'})")
        u, ln = ours["ours UNet, couple mid"], ours["ours LightNet"]
        if isinstance(u, float) and isinstance(ln, float):
            goal.append(f"LightNet vs UNet (couple mid) at ~equal parameters, best s/clip: {ln:.3g} vs {u:.3g} "
                        f"(goal LightNet faster: {'met' if ln < u else 'NOT met'})")
        video, audio, text, px = self.sizes
        notes = "\n".join([
            f"One clip: video latent {list(video)} ({video[1]} frames of {video[2] * px}² px through an SD-style "
            f"VAE), audio latent {list(audio)} (AudioLDM mel latent), text tokens {list(text)} random; "
            f"{self.steps} guided steps (guidance {GUIDANCE}, batch 2 = [cond; uncond]), DDIM (diffusers), "
            f"random weights. Inference: bf16 weights, eval, torch.inference_mode, bf16 autocast "
            f"(CPU: float32). Ours sample through mm.models.tavdiffusion.sampling.sample_latents (joint: both "
            f"streams, exchange every step); the peers through the same scheduler in a plain loop.",
            "CUDA graph: the denoiser forward captured once in torch.cuda.CUDAGraph (eager kernels, no "
            f"compile). compiled: torch.compile(denoiser, mode={self.args.compile_mode!r}) in a child "
            "process; 'compile s' = the first call's seconds (compile + one run).",
            f"Training: samples/s of one AdamW step (fp32 weights, bf16 autocast, forward + backward + "
            f"step) on {self.args.train_batch} clips at random timesteps; ours: both MSEs + 0.1 InfoNCE; "
            f"peers: both UNets' MSE in one step.",
            "'best s/clip + VAE decode' adds the video VAE decode only (the mel VAE + vocoder are not timed).",
            *self.notes, *goal])
        return write_results(self.args.out, "tav_diffusion",
                             "TAVDiffusion sampling and training vs diffusers (issue 18)",
                             {"sampling and training": (rows, COLUMNS)}, notes=notes)


def child(args) -> None:
    """One torch.compile row (``--child NAME``): prints ``CHILD {json}`` as its last line."""
    bench = Bench(args)
    model = bench.new(args.child, bench.infer_dtype).eval()
    compiled = torch.compile(model, mode=args.compile_mode)
    raw = ours_fn(compiled, mask=args.child != "ours LightNet")

    def fn(*inputs):
        torch.compiler.cudagraph_mark_step_begin()
        return raw(*inputs)
    run = ours_sampler(fn, bench.sizes, bench.device)
    with torch.inference_mode(), autocast(bench.device):
        first = wall_s(run, 1)
        seconds, how = time_sampling(run, bench.steps, args.row_budget)
    print("CHILD " + json.dumps({"compiled s/clip": seconds, "compile s": first, "how": how}), flush=True)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and latents, 2 steps (CPU check)")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (0: 40, or 2 with --tiny)")
    ap.add_argument("--train-batch", type=int, default=0, help="clips per training step (0: 4, or 2 with --tiny)")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds for the whole run")
    ap.add_argument("--row-budget", type=float, default=10.0, help="seconds for one timing")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--compile-budget", type=float, default=150.0, help="seconds for one torch.compile row")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.train_batch = args.train_batch or (2 if args.tiny else 4)
    if args.child:
        child(args)
        return ""
    bench = Bench(args)
    with torch.inference_mode(), autocast(bench.device):
        bench.peers()
        bench.ours()
    bench.training()
    if bench.cuda and not args.no_compile:
        bench.compiled()
    text = bench.write()
    print(text)
    return text


if __name__ == "__main__":
    main()
