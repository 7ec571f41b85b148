// Reading config.json fields the way diffusers / transformers do (missing fields take the
// class defaults, unknown ones are ignored) with errors that name the file and the field.
type Json = Record<string, unknown>;

export class ConfigReader {
  constructor(readonly json: Json, readonly where: string) {}

  private fail(field: string, want: string): never {
    throw new Error(`${this.where}: "${field}" must be ${want}, got ${JSON.stringify(this.json[field])}`);
  }

  private get<T>(field: string, def: T | undefined, ok: (v: unknown) => boolean, want: string): T {
    const v = this.json[field];
    if (v === undefined || v === null) {
      if (def === undefined) throw new Error(`${this.where}: "${field}" is required`);
      return def;
    }
    if (!ok(v)) this.fail(field, want);
    return v as T;
  }

  num(field: string, def?: number): number {
    return this.get(field, def, (v) => typeof v === 'number' && Number.isFinite(v), 'a number');
  }

  /** an integer >= min (default 0) */
  int(field: string, def?: number, min = 0): number {
    return this.get(field, def, (v) => Number.isInteger(v) && (v as number) >= min, `an integer >= ${min}`);
  }

  bool(field: string, def?: boolean): boolean {
    return this.get(field, def, (v) => typeof v === 'boolean', 'true or false');
  }

  str<S extends string>(field: string, def?: S, allowed?: readonly S[]): S {
    return this.get(field, def, (v) => typeof v === 'string' && (!allowed || allowed.includes(v as S)), allowed ? `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}` : 'a string');
  }

  /** a string or null */
  optStr<S extends string>(field: string, allowed?: readonly S[]): S | null {
    return this.json[field] == null ? null : this.str<S>(field, undefined, allowed);
  }

  /** an integer or null */
  optInt(field: string): number | null {
    return this.json[field] == null ? null : this.int(field);
  }

  ints(field: string, def?: number[]): number[] {
    return this.get(field, def, (v) => Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0), 'a list of integers');
  }

  strs(field: string, def?: string[]): string[] {
    return this.get(field, def, (v) => Array.isArray(v) && v.every((x) => typeof x === 'string'), 'a list of strings');
  }

  /** an integer, or a list of n integers (diffusers' per-block settings); always returns the list */
  perBlock(field: string, n: number, def?: number | number[]): number[] {
    const v = this.get<number | number[]>(field, def, (x) => Number.isInteger(x) || (Array.isArray(x) && x.every(Number.isInteger)), 'an integer or a list of integers');
    if (!Array.isArray(v)) return new Array(n).fill(v);
    if (v.length !== n) this.fail(field, `a list of ${n} integers (one per block)`);
    return v;
  }
}
