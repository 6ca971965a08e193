// Validates every dashboard in ../grafana against Grafana's published schema, the
// `@grafana/schema` package (pinned in package.json), with the TypeScript compiler:
//
// * the whole dashboard is type-checked as a `Dashboard`, and each panel's `options` and
//   `fieldConfig.defaults.custom` as its panel plugin's `Options` and `FieldConfig`. Each
//   JSON value is written out as a TypeScript object literal, so unknown fields are errors
//   (excess property checks) and string enums are checked by value;
// * then what the schema cannot say: unique panel ids, a grid position inside the 24
//   columns with no two panels overlapping, every query on the `${datasource}` variable with
//   a PromQL `expr`, the `datasource`, `node` and `netns` variables, and only metrics that
//   exist (the README's Metrics table, and the contract of the daemon's rollback triggers and
//   checks below).
//
// Run by `cargo xtask test` (after `cargo xtask setup` ran `npm ci` here): node validate.mjs
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const dashboards = path.join(here, '..', 'grafana');
const generated = path.join(here, '.generated');
const readme = path.join(here, '..', '..', 'README.md');


const DATASOURCE_UID = '${datasource}';
const REQUIRED_VARIABLES = ['datasource', 'node', 'netns'];

// Each panel type the dashboards use, and where its plugin's schema lives in @grafana/schema.
const composable = (dir, file) => `@grafana/schema/dist/esm/raw/composable/${dir}/panelcfg/x/${file}_types.gen`;
const PANEL_TYPES = {
  timeseries: { module: composable('timeseries', 'TimeSeriesPanelCfg'), custom: 'FieldConfig' },
  stat: { module: composable('stat', 'StatPanelCfg'), custom: null },
  'state-timeline': { module: composable('statetimeline', 'StateTimelinePanelCfg'), custom: 'FieldConfig' },
  table: { module: composable('table', 'TablePanelCfg'), custom: 'FieldConfig' },
};

// A JSON value's type for schema type T: string enums become the union of their values (JSON
// holds "line", not GraphDrawStyle.Line); everything else keeps its shape.
const PRELUDE = `
type IsAny<T> = 0 extends 1 & T ? true : false;
export type Wire<T> = IsAny<T> extends true ? T
  : T extends string ? (string extends T ? T : \`\${T}\`)
  : T extends number | boolean | null | undefined ? T
  : T extends readonly (infer U)[] ? Wire<U>[]
  : T extends object ? { [K in keyof T]: Wire<T[K]> }
  : T;
`;

function knownMetrics() {
  const names = new Set();
  for (const line of fs.readFileSync(readme, 'utf8').split('\n')) {
    const match = /^\| `(cniguard_[a-z0-9_]+)` \|/.exec(line);
    if (match) names.add(match[1]);
  }
  return names;
}

function isKnownMetric(name, known) {
  if (known.has(name)) return true;
  const base = name.replace(/_(bucket|count|sum)$/, '');
  return base !== name && known.has(base);
}

/** Every panel, rows' nested panels included. */
function allPanels(dashboard) {
  return (dashboard.panels ?? []).flatMap((p) => [p, ...(p.type === 'row' ? p.panels ?? [] : [])]);
}

function structuralErrors(file, dashboard, known) {
  const errors = [];
  const err = (what) => errors.push(`${file}: ${what}`);
  const variables = dashboard.templating?.list ?? [];
  for (const name of REQUIRED_VARIABLES) {
    if (!variables.some((v) => v.name === name)) err(`no \`${name}\` variable`);
  }
  for (const v of variables.filter((v) => v.type === 'query')) {
    if (v.datasource?.uid !== DATASOURCE_UID) err(`variable ${v.name}: datasource is not ${DATASOURCE_UID}`);
    if (!v.query?.query) err(`variable ${v.name}: no query`);
  }
  const ids = new Map();
  const cells = new Map();
  for (const panel of allPanels(dashboard)) {
    const name = `panel ${panel.id} "${panel.title}"`;
    if (typeof panel.id !== 'number') err(`${name}: no numeric id`);
    else if (ids.has(panel.id)) err(`${name}: id already used by "${ids.get(panel.id)}"`);
    else ids.set(panel.id, panel.title);
    const g = panel.gridPos;
    if (!g || ![g.x, g.y, g.w, g.h].every(Number.isInteger) || g.x < 0 || g.y < 0 || g.w < 1 || g.h < 1 || g.x + g.w > 24) {
      err(`${name}: gridPos missing or outside the 24 columns: ${JSON.stringify(g)}`);
    } else {
      for (let y = g.y; y < g.y + g.h; y++) {
        for (let x = g.x; x < g.x + g.w; x++) {
          const other = cells.get(`${x},${y}`);
          if (other !== undefined && other !== panel.id) err(`${name}: overlaps panel ${other}`);
          cells.set(`${x},${y}`, panel.id);
        }
      }
    }
    if (panel.type === 'row') continue;
    if (!(panel.type in PANEL_TYPES)) err(`${name}: panel type ${panel.type} has no schema in PANEL_TYPES`);
    if (panel.datasource?.uid !== DATASOURCE_UID) err(`${name}: datasource is not ${DATASOURCE_UID}`);
    const targets = panel.targets ?? [];
    if (targets.length === 0) err(`${name}: no targets`);
    const refIds = new Set();
    for (const t of targets) {
      if (!t.refId || refIds.has(t.refId)) err(`${name}: missing or repeated refId ${t.refId}`);
      refIds.add(t.refId);
      if (t.datasource?.uid !== DATASOURCE_UID) err(`${name} ${t.refId}: datasource is not ${DATASOURCE_UID}`);
      if (typeof t.expr !== 'string' || t.expr.trim() === '') {
        err(`${name} ${t.refId}: no expr`);
        continue;
      }
      for (const metric of t.expr.match(/\bcniguard_[a-z0-9_]+\b/g) ?? []) {
        if (!isKnownMetric(metric, known)) err(`${name} ${t.refId}: unknown metric ${metric}`);
      }
    }
  }
  return errors;
}

/** The TypeScript source that type-checks one dashboard, and which panel each line is about. */
function typescriptSource(dashboard) {
  const lines = [`import type { Dashboard } from '@grafana/schema';`];
  const imports = new Map();
  const body = [`// the dashboard`, `export const dashboard: Wire<Dashboard> = ${JSON.stringify(dashboard, null, 2)};`];
  for (const [index, panel] of allPanels(dashboard).entries()) {
    const schema = PANEL_TYPES[panel.type];
    if (!schema) continue;
    if (!imports.has(panel.type)) imports.set(panel.type, `p${imports.size}`);
    const ns = imports.get(panel.type);
    const custom = schema.custom ? `${ns}.${schema.custom}` : 'Record<string, never>';
    body.push(
      `// panel ${panel.id} "${panel.title}" (${panel.type})`,
      `export const options_${index}: Wire<${ns}.Options> = ${JSON.stringify(panel.options ?? {}, null, 2)};`,
      `export const custom_${index}: Wire<${custom}> = ${JSON.stringify(panel.fieldConfig?.defaults?.custom ?? {}, null, 2)};`,
    );
  }
  for (const [type, ns] of imports) lines.push(`import type * as ${ns} from '${PANEL_TYPES[type].module}';`);
  return [...lines, PRELUDE, ...body].join('\n');
}

function typeErrors(sources) {
  const program = ts.createProgram(Object.keys(sources), {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    types: [],
  });
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
    if (!d.file) return message;
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    const text = d.file.text.split('\n');
    const about = text.slice(0, line + 1).reverse().find((l) => l.startsWith('// ')) ?? '';
    return `${sources[d.file.fileName] ?? d.file.fileName}, ${about.slice(3)} (line ${line + 1} of ${d.file.fileName}):\n  ${message}`;
  });
}

const files = fs.readdirSync(dashboards).filter((f) => f.endsWith('.json')).sort();
if (files.length === 0) {
  console.error(`validate: no dashboards in ${dashboards}`);
  process.exit(1);
}
const known = knownMetrics();
fs.rmSync(generated, { recursive: true, force: true });
fs.mkdirSync(generated);
const errors = [];
const sources = {};
for (const file of files) {
  const dashboard = JSON.parse(fs.readFileSync(path.join(dashboards, file), 'utf8'));
  errors.push(...structuralErrors(file, dashboard, known));
  const ts_file = path.join(generated, file.replace(/\.json$/, '.ts'));
  fs.writeFileSync(ts_file, typescriptSource(dashboard));
  sources[ts_file] = file;
}
errors.push(...typeErrors(sources));
if (errors.length > 0) {
  console.error(errors.join('\n'));
  console.error(`validate: ${errors.length} problem(s) in ${files.join(', ')}`);
  process.exit(1);
}
const version = JSON.parse(fs.readFileSync(path.join(here, 'node_modules/@grafana/schema/package.json'), 'utf8')).version;
console.log(`validate: ${files.join(', ')} match @grafana/schema ${version} and the structural checks`);
