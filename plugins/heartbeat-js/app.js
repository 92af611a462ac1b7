// heartbeat-js: the JavaScript heartbeat. Logs "I am Leader" with its term
// on every tick, like plugins/heartbeat. Built with componentize-js against
// wit/ (see plugins/README.md and scripts/build-plugins.sh).
import { log } from 'zkrun:plugin/host@0.1.2';

// One instance serves one term: module state starts afresh every term.
let ticks = 0;

export function onElected(leadership) {
  log('info', `elected: term ${leadership.term} id ${leadership.participant}`);
}

export function tick(leadership) {
  ticks += 1;
  log('info', `I am Leader: term ${leadership.term} id ${leadership.participant} tick ${ticks}`);
}

export function onDemoted(reason) {
  log('info', `demoted: ${reason} after ${ticks} ticks`);
}
