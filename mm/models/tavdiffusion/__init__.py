"""TAVDiffusion: two-stream text-to-audible-video latent diffusion (DESIGN §6)."""
