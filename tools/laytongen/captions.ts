// LaytonGen's text side for the procedural world: the caption tokenizer, the small text
// encoder (flan-t5's architecture, T5_CONFIG) and the caption features the GPT reads.
//
// Tokenizer: a Hugging Face tokenizer.json in T5's format (Unigram model, '▁' Metaspace,
// '</s>' appended by a TemplateProcessing post-processor, '<pad>' id 0, '</s>' 1, '<unk>' 2),
// whose pieces are '▁' + every word of the world's grammar (tools/world.ts), so each word is
// one token; the normaliser is NFKC then lowercase (the grammar is lowercase; "A Red Circle"
// reads as "a red circle"). Built from the grammar alone: the same file every time.
//
// Text encoder: T5EncoderModel(T5_CONFIG, vocab_size of this tokenizer), randomly initialised
// from a fixed seed and frozen. The world's captions carry meaning only through which words
// occur in which order; a random T5 keeps both (each token's own embedding passes through
// the residual stream, the relative position bias and attention mix in its neighbours), and
// the GPT's trained caption projection (cap_proj) reads them off. Training the encoder jointly
// would add its backward to every step for information the features already hold.
//
// Caption features as LlamaGen lays them out (dataset/t2i.py, sample_t2i.py): the T5 states
// of the caption's tokens right-aligned in the cls_token_num rows (the last caption token
// sits just before the first image token), zeros in the padding rows in front, and the
// mask 0 there.
//
// No Node module on this path (browsers load the text encoder through it); reading and writing
// the folder on disk is in text.ts.
import { Generator, type Tensor, cast, embedding, mul, reshape, tensor, tidy, unsqueeze, withBuild } from '../../runtime/index.ts';
import type { ModelFiles } from '../../models/checkpoint.ts';
import { loadModel } from '../../models/registry.ts';
import { T5EncoderModel, encodeCaptions, parseT5Config, t5Kind } from '../../models/t5.ts';
import { Tokenizer } from '../../models/tokenizer.ts';
import { GPT_CONFIG, T5_CONFIG } from '../train/configs.ts';
import { World } from '../world.ts';

/** Caption tokens the GPT reads (GPT_CONFIG.cls_token_num), '</s>' included. */
export const CAPTION_TOKENS = GPT_CONFIG.cls_token_num;
/** T5's special pieces and their ids. */
const SPECIAL = ['<pad>', '</s>', '<unk>'] as const;
const META = '\u2581';
/** Unigram log-probabilities: a whole word always beats any split of it; '▁' alone (before an unknown word) is the last resort. */
const WORD_SCORE = -3;
const META_SCORE = -10;

let words: string[] | undefined;

/** Every word of the world's captions (both splits), plus "an", which the grammar's parser accepts for "a"; sorted. */
export function worldWords(): string[] {
  if (words) return words;
  const set = new Set<string>(['an']);
  const world = new World();
  for (const split of ['train', 'heldout'] as const) for (const s of world.captions(split)) for (const w of s.caption.split(' ')) set.add(w);
  words = [...set].sort();
  return words;
}

/** The world's caption tokenizer as tokenizer.json text (see the header). */
export function buildWorldTokenizer(): string {
  const vocab: [string, number][] = [...SPECIAL.map((p): [string, number] => [p, 0]), [META, META_SCORE], ...worldWords().map((w): [string, number] => [META + w, WORD_SCORE])];
  const metaspace = { type: 'Metaspace', replacement: META, add_prefix_space: true, prepend_scheme: 'always', split: true };
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Lowercase' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, metaspace] },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      special_tokens: { '</s>': { id: '</s>', ids: [1], tokens: ['</s>'] } },
    },
    decoder: metaspace,
    model: { type: 'Unigram', unk_id: 2, vocab, byte_fallback: false },
  };
  return JSON.stringify(json, null, 1) + '\n';
}

/** A text encoder and its tokenizer (the tokenizer.json text is kept for saving). */
export interface CaptionEncoder {
  model: T5EncoderModel;
  tokenizer: Tokenizer;
  tokenizerJson: string;
  /** the tokenizer is the world's (buildWorldTokenizer): captions are checked against its words */
  world: boolean;
}

/** T5_CONFIG with fields of `over` and the world tokenizer's vocabulary size. */
export const worldT5Config = (vocabSize: number, over: Record<string, unknown> = {}) =>
  parseT5Config({ ...T5_CONFIG, ...over, vocab_size: vocabSize }, 'tools/train/configs.ts T5_CONFIG');

/** The world's frozen text encoder: T5_CONFIG (fields of `over` replaced) randomly initialised from `seed`, requiring no gradients. */
export function worldTextEncoder(seed: number, over: Record<string, unknown> = {}): CaptionEncoder {
  const tokenizerJson = buildWorldTokenizer();
  const tokenizer = Tokenizer.fromJson(tokenizerJson, 'world tokenizer.json');
  const model = withBuild({ dtype: 'f32', generator: new Generator(seed) }, () => new T5EncoderModel(worldT5Config(tokenizer.vocabSize, over)));
  model.setTrainable(false);
  return { model, tokenizer, tokenizerJson, world: true };
}

/** Reads a text_encoder/ folder: config.json + weights (T5EncoderModel) + tokenizer.json. */
export async function loadTextEncoder(files: ModelFiles): Promise<CaptionEncoder> {
  const src = await files.open('tokenizer.json');
  if (!src) throw new Error(`${files.name}: no tokenizer.json (the text encoder's tokenizer, Hugging Face format)`);
  let tokenizerJson: string;
  try {
    tokenizerJson = new TextDecoder().decode(await src.read(0, src.size));
  } finally {
    await src.close?.();
  }
  const tokenizer = Tokenizer.fromJson(tokenizerJson, `${files.name}/tokenizer.json`);
  const { model, config } = await loadModel(files, t5Kind);
  if (tokenizer.vocabSize > config.vocabSize) {
    model.dispose();
    throw new Error(`${files.name}: tokenizer.json has ${tokenizer.vocabSize} pieces but config.json's vocab_size is ${config.vocabSize}`);
  }
  model.setTrainable(false);
  return { model, tokenizer, tokenizerJson, world: tokenizerJson === buildWorldTokenizer() };
}

export interface CaptionFeatures {
  /** [B, maxLength, d_model]: each caption's T5 states right-aligned, zero rows in front */
  embs: Tensor;
  /** [B, maxLength] i32: 1 for the caption's tokens, 0 for the padding in front */
  mask: Tensor;
  /** per caption: it was cut to fit */
  truncated: boolean[];
}

export interface EncodeCaptionOptions {
  /** tokens per caption, '</s>' included (default CAPTION_TOKENS, the GPT's cls_token_num) */
  maxLength?: number;
  /** where warnings go (default console.warn): cut captions, words the world does not know */
  warn?: (msg: string) => void;
}

/** Checks one caption: a non-empty string or UTF-8 bytes (invalid bytes are the tokenizer's to report, with their offset). */
function checkCaption(c: unknown, i: number): string {
  if (typeof c !== 'string' && !(c instanceof Uint8Array))
    throw new TypeError(`caption ${i}: must be a string or UTF-8 bytes, got ${c === null ? 'null' : Array.isArray(c) ? 'an array' : typeof c}`);
  const text = typeof c === 'string' ? c : new TextDecoder('utf-8').decode(c);
  if (!text.trim()) throw new Error(`caption ${i} is empty${text.length ? ' (only whitespace)' : ''}`);
  return text;
}

/**
 * The GPT's caption input for `texts` (strings or UTF-8 bytes): tokenised (cut to maxLength
 * with a warning; with the world's tokenizer, words it does not know are warned about too),
 * encoded by the text encoder, and laid out as LlamaGen's training data (see the header).
 * Empty captions, non-strings and invalid UTF-8 are errors naming the caption.
 */
export async function encodeWorldCaptions(enc: CaptionEncoder, texts: readonly (string | Uint8Array)[], o: EncodeCaptionOptions = {}): Promise<CaptionFeatures> {
  if (!Array.isArray(texts) || texts.length === 0) throw new Error('encodeWorldCaptions: no captions');
  const warn = o.warn ?? ((m: string) => console.warn(m));
  const L = o.maxLength ?? CAPTION_TOKENS;
  const strings = texts.map(checkCaption);
  // the tokenizer reports invalid UTF-8 and the cut captions
  const { hidden, mask, truncated } = await encodeCaptions(enc.model, enc.tokenizer, texts as (string | Uint8Array)[], { maxLength: L, warn });
  if (enc.world) {
    const known = new Set(worldWords());
    strings.forEach((text, i) => {
      const unknown = text.normalize('NFKC').toLowerCase().split(/\s+/).filter((w) => w && !known.has(w));
      if (unknown.length) warn(`caption ${i}: ${unknown.map((w) => JSON.stringify(w)).join(', ')} ${unknown.length > 1 ? 'are' : 'is'} not in the world's vocabulary (read as <unk>)`);
    });
  }
  try {
    const B = texts.length;
    const m = (await mask.data()) as Int32Array;
    // row p of caption b takes row p - (L - n) of the T5 output when p >= L - n (n = its tokens)
    const src = new Int32Array(B * L);
    const keep = new Int32Array(B * L);
    for (let b = 0; b < B; b++) {
      let n = 0;
      for (let p = 0; p < L; p++) n += m[b * L + p];
      for (let p = L - n; p < L; p++) {
        src[b * L + p] = b * L + p - (L - n);
        keep[b * L + p] = 1;
      }
    }
    const d = hidden.shape[2];
    const embs = tidy(() => {
      const keepT = tensor(keep, [B, L], 'i32');
      const rows = reshape(embedding(tensor(src, [B * L], 'i32'), reshape(hidden, [B * L, d])), [B, L, d]);
      return mul(rows, unsqueeze(cast(keepT, rows.dtype), 2));
    });
    return { embs, mask: tensor(keep, [B, L], 'i32'), truncated };
  } finally {
    hidden.dispose();
    mask.dispose();
  }
}
