#!/usr/bin/env node
// The CLI is TypeScript run through tsx's ESM loader, so there is no build step to forget.
import { register } from 'tsx/esm/api';

register();
await import('../cli.ts');
