// Built-in example series, generated here from a fixed seed so that every load of the
// page shows the same numbers (and a test can reproduce them from the text box).

function seeded(seed) {
  // mulberry32: a small, well-known 32-bit PRNG
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(random) {
  // Box-Muller; 1 - u keeps log() away from 0
  const u = 1 - random();
  const v = random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

const round = (x, digits) => Number(x.toFixed(digits));

function sineWithNoise() {
  const random = seeded(12);
  return Array.from({ length: 96 }, (_, i) =>
    round(10 + 3 * Math.sin((2 * Math.PI * i) / 24) + 0.4 * gaussian(random), 3));
}

function trendWithWeeklySeason() {
  const random = seeded(7);
  const week = [0, 1.5, 2.5, 2, 3, -3.5, -5.5]; // Monday .. Sunday
  return Array.from({ length: 112 }, (_, i) =>
    round(50 + 0.3 * i + 2 * week[i % 7] + 0.8 * gaussian(random), 2));
}

function counter() {
  // a byte counter near 1.7e9: it only grows, faster by day than by night
  const random = seeded(3);
  let total = 1.7e9;
  return Array.from({ length: 96 }, (_, i) => {
    total += Math.round(1000 + 600 * Math.sin((2 * Math.PI * i) / 24) + 150 * random());
    return total;
  });
}

export const EXAMPLES = {
  sine: { label: "sine with noise (96 points, period 24)", make: sineWithNoise },
  weekly: { label: "trend with a weekly season (112 days)", make: trendWithWeeklySeason },
  counter: { label: "counter near 1.7e9 (96 points)", make: counter },
};
