// Tokenisation of a small T5-format tokenizer.json (test/fixtures/gen_t5.py: Unigram vocab with
// scores, NFKC, WhitespaceSplit + Metaspace '▁', '</s>' appended, pad id 0) through
// @huggingface/tokenizers: ids against hand-derived segmentations and against the Viterbi
// reference in gen_t5.py; padding, truncation that keeps '</s>', and bad input.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Tokenizer } from '../models/tokenizer.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const jsonText = readFileSync(fixture('t5_tokenizer.json'), 'utf8');
const tok = Tokenizer.fromJson(jsonText);
const vocab = (JSON.parse(jsonText).model.vocab as [string, number][]).map(([p]) => p);
const id = (piece: string) => {
  const i = vocab.indexOf(piece);
  if (i < 0) throw new Error(`no piece ${piece}`);
  return i;
};
const ids = (text: string | Uint8Array, maxLength = 120) => Array.from(tok.encode(text, { maxLength, padding: false }).ids);

describe('T5 tokenizer.json', () => {
  it('hand-derived segmentations', () => {
    const cases: [string, string[]][] = [
      ['a red cat', ['▁a', '▁red', '▁cat', '</s>']],
      // Viterbi, not greedy longest match: ▁blue (-5.1) + berry (-6) beats ▁blueb (-3) + erry (-12)
      ['blueberry', ['▁blue', 'berry', '</s>']],
      // ▁cat + s (-7.4) beats ▁c + at + s (-13.7)
      ['cats', ['▁cat', 's', '</s>']],
      ['', ['</s>']],
      ['  \t ', ['</s>']],
      // whitespace runs, tabs and newlines separate words like one space
      ['  two   blue\tsquares \n', ['▁two', '▁blue', '▁square', 's', '</s>']],
      // NFKC: the ligature ﬁ becomes f i (no ▁f piece: ▁ f i); e + combining acute composes to é
      ['café über ﬁ', ['▁café', '▁über', '▁', 'f', 'i', '</s>']],
      ['cafe\u0301', ['▁café', '</s>']],
      // characters without a piece are <unk>, consecutive ones fused into one
      ['猫犬🙂 cat', ['▁', '猫', '<unk>', '▁cat', '</s>']],
      // full-width letters become ASCII capitals, which have no pieces
      ['ＲＥＤ', ['▁', '<unk>', '</s>']],
      // special tokens in the text are matched before normalisation
      ['a</s>b', ['▁a', '</s>', '▁', 'b', '</s>']],
    ];
    for (const [text, pieces] of cases) expect(ids(text), JSON.stringify(text)).toEqual(pieces.map(id));
  });

  it('equal the Viterbi reference of gen_t5.py', () => {
    const expected = JSON.parse(readFileSync(fixture('t5_tokenizer_expected.json'), 'utf8')) as [string, number[]][];
    expect(expected.length).toBeGreaterThan(10);
    for (const [text, want] of expected) expect(ids(text), JSON.stringify(text)).toEqual(want);
  });

  it('pads to maxLength (default 120) with id 0 and mask 0', () => {
    const e = tok.encode('a red cat');
    expect(e.ids.length).toBe(120);
    expect(Array.from(e.ids.slice(0, 6))).toEqual([id('▁a'), id('▁red'), id('▁cat'), 1, 0, 0]);
    expect(e.ids.slice(4).every((v) => v === 0)).toBe(true);
    expect(Array.from(e.attentionMask).reduce((a, b) => a + b)).toBe(4);
    expect(Array.from(e.attentionMask.slice(0, 5))).toEqual([1, 1, 1, 1, 0]);
    expect(e.truncated).toBe(false);
    expect(tok.padId).toBe(0);
    expect(tok.decode(e.ids)).toBe('a red cat');
  });

  it('truncates to maxLength keeping </s>, and says so', () => {
    const words = (n: number) => Array.from({ length: n }, () => 'red').join(' ');
    const fits = tok.encode(words(119));
    expect(fits.truncated).toBe(false);
    expect(fits.ids[119]).toBe(1);
    const cut = tok.encode(words(130));
    expect(cut.truncated).toBe(true);
    expect(cut.ids.length).toBe(120);
    expect(Array.from(cut.ids.slice(117))).toEqual([id('▁red'), id('▁red'), 1]);
    expect(cut.attentionMask.every((v) => v === 1)).toBe(true);
    expect(ids('a red cat', 3)).toEqual([id('▁a'), id('▁red'), 1]);
  });

  it('UTF-8 bytes in, bad input out with clear errors', () => {
    expect(ids(new TextEncoder().encode('café über ﬁ'))).toEqual(ids('café über ﬁ'));
    const bad: [number[], number][] = [
      [[0x61, 0xff], 1], // never valid
      [[0xc0, 0x80], 0], // overlong NUL
      [[0x61, 0x62, 0xe2, 0x82], 2], // cut short
      [[0xed, 0xa0, 0x80], 0], // a UTF-16 surrogate
      [[0xf4, 0x90, 0x80, 0x80], 0], // past U+10FFFF
      [[0xe2, 0x28, 0xa1], 0], // bad continuation
    ];
    for (const [bytes, at] of bad)
      expect(() => tok.encode(new Uint8Array(bytes)), bytes.join()).toThrow(`tokenizer.json: encode: the bytes are not valid UTF-8 (at byte ${at})`);
    expect(() => tok.encode(42 as unknown as string)).toThrow(/the text must be a string or UTF-8 bytes, got number/);
    expect(() => tok.encode(null as unknown as string)).toThrow(/got null/);
    expect(() => tok.encode('a\ud800b')).toThrow(/unpaired UTF-16 surrogate at index 1/);
    expect(() => tok.encode('a', { maxLength: 1 })).toThrow(/maxLength must be an integer > 1/);
  });

  it('rejects a malformed tokenizer.json, and padding without a pad token', () => {
    expect(() => Tokenizer.fromJson('{"model": ', 'x/tokenizer.json')).toThrow(/^x\/tokenizer.json: not valid JSON/);
    expect(() => Tokenizer.fromJson('[]')).toThrow(/must hold a JSON object/);
    expect(() => Tokenizer.fromJson('{}')).toThrow(/"model" must be an object with a "type"/);
    expect(() => Tokenizer.fromJson('{"model": {"type": "Nope"}}')).toThrow(/tokenizer.json: .*Nope/);
    const noPad = Tokenizer.fromJson(jsonText.replaceAll('"<pad>"', '"<nothing>"'));
    expect(noPad.padId).toBeNull();
    expect(() => noPad.encode('a')).toThrow(/padding needs a pad token/);
    expect(Array.from(noPad.encode('a', { padding: false }).ids)).toEqual([id('▁a'), 1]);
  });
});
