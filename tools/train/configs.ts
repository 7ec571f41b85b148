// The embedded default: Layton and LaytonGen scaled down to the procedural world so the whole
// recipe trains on a 2-core software adapter. Same model classes and config fields as the
// published models (diffusers / LlamaGen / transformers names); only the sizes differ.
//   image 32x32 -> VAE (f = 2) -> latent 4x16x16 (256 positions)
//   tokenizer copy 16x16 -> VQ (f = 2) -> 8x8 = 64 tokens, codebook 1024 x 8 (l2) -> VQ decoder 16x16
//   control branch: C [8, 8, 8] upsampled x2 (nearest) onto the latent grid, stride-1 embedding
// 32 px is the smallest size at which the GenEval checker reads ground-truth images reliably.

export const IMAGE_SIZE = 32;
export const TOKENIZER_SIZE = 16;

export const VAE_CONFIG = {
  _class_name: 'AutoencoderKL',
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
  block_out_channels: [16, 32], // half the former [32, 64]: steps, not width, bound the stage (autoencoders.ts)
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 8,
  sample_size: IMAGE_SIZE,
  scaling_factor: 1.0, // set from the trained VAE's latent std (as SD did) before the LDM trains
  force_upcast: false,
};

export const UNET_CONFIG = {
  _class_name: 'UNet2DConditionModel',
  sample_size: IMAGE_SIZE / 2,
  in_channels: 4,
  out_channels: 4,
  down_block_types: ['DownBlock2D', 'DownBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  up_block_types: ['UpBlock2D', 'UpBlock2D'],
  block_out_channels: [32, 64], // half the former [64, 128]: 2-4x the steps in the time (diffusion.ts)
  layers_per_block: 1,
  attention_head_dim: 4,
  cross_attention_dim: 32, // the empty prompt: one zero token (Layton's decoder is not text-conditioned)
  norm_num_groups: 8,
  flip_sin_to_cos: true,
  freq_shift: 0,
};

/** ControlNetModel.from_unet options for the LADD branch. */
export const CONTROLNET_OPTIONS = {
  codeDim: 8,
  upsampleFactor: (IMAGE_SIZE / 2) / (TOKENIZER_SIZE / 2),
  conditioningEmbeddingOutChannels: [32, 64],
  conditioningEmbeddingStride: 1 as const,
};

export const VQ_CONFIG = {
  _class_name: 'VQModel',
  codebook_size: 1024,
  codebook_embed_dim: 8,
  codebook_l2_norm: true,
  commit_loss_beta: 0.25,
  // LlamaGen's default, no codebook entropy loss. At 0.1 (needed by a former recipe whose hues
  // collapsed) a flat colour was written with ~230 synonymous codes the GPT cannot predict; at 0 with
  // the MSE term and 16 px target the hues hold, about 25 codes serve a colour (the PyTorch model),
  // and the stage gains 1 dB and takes a quarter less time (tools/train/pytorch/README.md, synonyms; README).
  entropy_loss_ratio: 0,
  encoder_ch_mult: [1, 2],
  decoder_ch_mult: [1, 2],
  z_channels: 64,
  ch: 32, // the narrowest LlamaGen's GroupNorm(32) allows: steps, not width, bound the stage (autoencoders.ts)
  num_res_blocks: 1,
};

// v_prediction (as SD 2.x): 1-step decoding starts at t = 999, where sqrt(alpha_bar) = 0.068; an
// epsilon UNet's x0 = (z - 0.998 eps) / 0.068 multiplies its error by 15 there, a v UNet's
// x0 = 0.068 z - 0.998 v does not (measured on this recipe: held-out x0 MSE at t = 999 0.89
// after the 160 LDM steps with v, 6.1 after 240 with epsilon).
export const SCHEDULER_CONFIG = {
  _class_name: 'DDPMScheduler',
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  prediction_type: 'v_prediction',
  timestep_spacing: 'trailing',
  steps_offset: 1,
  clip_sample: false,
  // Zero terminal SNR (Lin et al. 2023): t = 999 is pure noise and a v UNet's x0 there is -v, where
  // sqrt(alpha_bar) = 0.068 made the UNet reproduce 0.068 of the starting noise exactly to cancel it;
  // what it did not cancel stayed as grain. The former shipped decoder, on 64 held-out images: SSIM
  // 0.897 from one noise draw, 0.903 from the mean of 4 draws' latents (2-step 0.898 -> 0.906).
  rescale_betas_zero_snr: true,
};

export const LAYTON_CONFIG = {
  _class_name: 'Layton',
  image_size: IMAGE_SIZE,
  tokenizer_size: TOKENIZER_SIZE,
  conditioning_scale: 1.0,
  decode_timesteps: { 1: [999], 2: [999, 499] },
};

/** The small text encoder (flan-t5's architecture) and LaytonGen GPT. */
export const T5_CONFIG = {
  architectures: ['T5EncoderModel'],
  d_model: 128,
  d_kv: 32,
  d_ff: 256,
  num_layers: 2,
  num_heads: 4,
  relative_attention_num_buckets: 32,
  relative_attention_max_distance: 128,
  layer_norm_epsilon: 1e-6,
  feed_forward_proj: 'gated-gelu',
  // vocab_size: from the world's tokenizer.json
};

// dim 128 rather than 256: the stage is compute-bound (a batch-64 step takes twice a batch-32
// one), dim 128 runs 2.1x the tokens a second, and at dim 256 the 45 minutes gave 400 steps, a
// quarter of a token per parameter with the held-out loss still falling fast: far on the small
// side of the compute-optimal size (about 20 tokens a parameter), so the smaller model trains on
// twice the captions instead.
export const GPT_CONFIG = {
  model_type: 't2i',
  dim: 128,
  n_layer: 4,
  n_head: 4,
  vocab_size: VQ_CONFIG.codebook_size,
  block_size: (TOKENIZER_SIZE / 2) ** 2,
  cls_token_num: 16,
  caption_dim: T5_CONFIG.d_model,
  class_dropout_prob: 0.1,
  // No dropout (LlamaGen's are 0.1): 960 steps are under 4 passes over the captions, and with it the
  // last training loss stayed above the held-out one (2.05 against 1.95). Without it the held-out
  // loss is about the same (1.98) but mini-GenEval rose from 0.09 to 0.12 (means over seeds, CFG 1-3; README).
  token_dropout_p: 0,
  resid_dropout_p: 0,
  ffn_dropout_p: 0,
};
