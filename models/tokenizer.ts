// Text -> token ids from a Hugging Face `tokenizer.json` (T5's: NFKC-style normaliser, Metaspace
// '▁' pre-tokeniser, Unigram model, '</s>' appended by the post-processor), through the
// @huggingface/tokenizers package (pure JS, no dependencies, Node and browsers). This file adds
// what LaytonGen's caption encoder needs on top: fixed-length output with padding, truncation
// that keeps the special tokens (as transformers' `truncation=True, max_length=N` does: the
// text is cut, then '</s>' appended), and clear errors for bad input.
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

export interface EncodeOptions {
  /** total length including special tokens (default 120: LaytonGen's caption length) */
  maxLength?: number;
  /** pad with the pad id up to maxLength (default true) */
  padding?: boolean;
}

export interface Encoding {
  ids: Int32Array;
  /** 1 for real tokens (special tokens included), 0 for padding */
  attentionMask: Int32Array;
  /** the text had more tokens than fit and was cut */
  truncated: boolean;
}

const SECTIONS = ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder'] as const;

/** Byte offset of the first invalid UTF-8 sequence, or -1 (overlongs, surrogates and > U+10FFFF are invalid). */
function invalidUtf8At(b: Uint8Array): number {
  for (let i = 0; i < b.length; ) {
    const c = b[i];
    const n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0) return i;
    // the second byte's range excludes overlongs (E0, F0), surrogates (ED) and code points past U+10FFFF (F4)
    const lo = c === 0xe0 ? 0xa0 : c === 0xf0 ? 0x90 : 0x80;
    const hi = c === 0xed ? 0x9f : c === 0xf4 ? 0x8f : 0xbf;
    for (let k = 1; k <= n; k++) {
      const x = b[i + k];
      if (x === undefined || x < (k === 1 ? lo : 0x80) || x > (k === 1 ? hi : 0xbf)) return i;
    }
    i += n + 1;
  }
  return -1;
}

export class Tokenizer {
  private constructor(
    private readonly hf: HfTokenizer,
    /** names the file in errors */
    readonly where: string,
    /** the id padding uses: tokenizer.json's padding.pad_id, else the id of '<pad>'; null if neither */
    readonly padId: number | null,
    private readonly unkId: number,
    /** special tokens the post-processor adds to one text (T5: 1, '</s>') */
    readonly specialCount: number,
  ) {}

  /** Parses a tokenizer.json (text or UTF-8 bytes); `config` is tokenizer_config.json's object, if any. */
  static fromJson(text: string | Uint8Array, where = 'tokenizer.json', config: Record<string, unknown> = {}): Tokenizer {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(typeof text === 'string' ? text : new TextDecoder('utf-8', { fatal: true }).decode(text));
    } catch (e) {
      throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
    }
    if (!json || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${where}: must hold a JSON object`);
    const model = json.model as Record<string, unknown> | undefined;
    if (!model || typeof model !== 'object' || typeof model.type !== 'string')
      throw new Error(`${where}: "model" must be an object with a "type" (Unigram, BPE, WordPiece)`);
    const full: Record<string, unknown> = { added_tokens: [], ...json };
    for (const s of SECTIONS) full[s] ??= null;
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(full, config);
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
    const pad = json.padding as { pad_id?: unknown } | null | undefined;
    const padId = typeof pad?.pad_id === 'number' ? pad.pad_id : hf.token_to_id('<pad>') ?? null;
    const unkId = hf.model?.unk_token_id ?? -1;
    const specialCount = hf.post_processor ? hf.post_processor([], null, true).tokens.length : 0;
    return new Tokenizer(hf, where, padId, unkId, specialCount);
  }

  get vocabSize(): number {
    return this.hf.get_vocab(true).size;
  }

  /** The text as a string: strings must be well-formed UTF-16, bytes valid UTF-8. */
  private text(text: unknown, what: string): string {
    if (text instanceof Uint8Array) {
      const bad = invalidUtf8At(text);
      if (bad >= 0) throw new Error(`${what}: the bytes are not valid UTF-8 (at byte ${bad})`);
      return new TextDecoder('utf-8').decode(text);
    }
    if (typeof text !== 'string') throw new TypeError(`${what}: the text must be a string or UTF-8 bytes, got ${text === null ? 'null' : typeof text}`);
    const lone = /\p{Cs}/u.exec(text);
    if (lone) throw new Error(`${what}: the text has an unpaired UTF-16 surrogate at index ${lone.index}`);
    return text;
  }

  /** Token ids of one text, special tokens added; cut to maxLength (keeping the special tokens) and padded. */
  encode(text: string | Uint8Array, o: EncodeOptions = {}): Encoding {
    const what = `${this.where}: encode`;
    const maxLength = o.maxLength ?? 120;
    const padding = o.padding ?? true;
    if (!Number.isInteger(maxLength) || maxLength <= this.specialCount)
      throw new Error(`${what}: maxLength must be an integer > ${this.specialCount} (the special tokens), got ${maxLength}`);
    if (padding && this.padId === null) throw new Error(`${what}: padding needs a pad token, and ${this.where} has no "padding" section and no '<pad>'`);
    let tokens = this.hf.tokenize(this.text(text, what), { add_special_tokens: false });
    const room = maxLength - this.specialCount;
    const truncated = tokens.length > room;
    if (truncated) tokens = tokens.slice(0, room);
    if (this.hf.post_processor) tokens = this.hf.post_processor(tokens, null, true).tokens;
    const len = padding ? maxLength : tokens.length;
    const ids = new Int32Array(len).fill(this.padId ?? 0);
    const attentionMask = new Int32Array(len);
    tokens.forEach((t, i) => {
      ids[i] = this.hf.token_to_id(t) ?? this.unkId;
      attentionMask[i] = 1;
    });
    return { ids, attentionMask, truncated };
  }

  /** The text of ids, special tokens and padding skipped. */
  decode(ids: ArrayLike<number>): string {
    const keep = Array.from(ids);
    return keep.length ? this.hf.decode(keep, { skip_special_tokens: true }) : '';
  }
}
