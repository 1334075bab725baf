// Jest setup provided by Grafana scaffolding
import './.config/jest-setup';

// i18next (initialised by @grafana/i18n) prints an advertisement on console.info; keep test output readable
const info = console.info;
console.info = (...args) => {
  if (typeof args[0] === 'string' && args[0].includes('i18next')) {
    return;
  }
  info(...args);
};
