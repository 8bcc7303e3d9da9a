// Types of tilewarm/inline (inline.js): the same API as the main entry.
export * from './index.js';
