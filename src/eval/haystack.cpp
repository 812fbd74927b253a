#include "eval/haystack.h"

#include <random>

namespace duo {

namespace {

// Slots: {P} person, {T} town, {N} thing, {A} adjective, {S} season, {V} verb (past tense),
// {W} weather, {J} job, {R} river, {M} number word.
const char* const kTemplates[] = {
    "In the {S} of that year, {P} left {T} with nothing but a {A} {N} and a letter from the {J}.",
    "The road to {T} followed the {R} for most of a day, and travellers often stopped to rest beneath the willows.",
    "{P} had always believed that a {A} {N} said more about its owner than any speech could.",
    "By the time the {W} reached the valley, the market in {T} had already closed its stalls.",
    "Nobody in {T} remembered who first {V} the old {N}, but everyone agreed it had been there for {M} generations.",
    "The {J} kept careful notes about the {R}, recording how high the water rose each {S}.",
    "It was {P} who suggested that the council should rebuild the bridge before the {W} returned.",
    "Children in {T} learned to count by walking the {M} stone steps that led down to the {R}.",
    "A {A} {N} hung above the door of the inn, and it creaked whenever the wind came from the north.",
    "{P} {V} the {N} with great care, knowing that the {J} would inspect it in the morning.",
    "There were {M} houses on the hill, each painted a different colour, and each with a garden of herbs.",
    "The {J} from {T} arrived late, complaining about the {W} and the state of the roads.",
    "In those days the {R} was wide enough that a ferry was needed to carry carts from one bank to the other.",
    "Most evenings {P} sat by the window, watching the lamps of {T} come on one by one.",
    "The library in {T} held {M} shelves of ledgers, maps and letters that no one had read in years.",
    "When the {S} harvest failed, the families of {T} shared what little grain they had left.",
    "A {A} silence settled over the square after the {J} finished reading the announcement.",
    "{P} once walked from {T} to the sea in {M} days, sleeping in barns and trading stories for bread.",
    "The {N} was {A}, heavier than it looked, and it had to be carried by two people at once.",
    "Every {S} the fishermen of the {R} held a festival with music, lanterns and long tables of food.",
    "The {J} said that the {W} would pass by noon, but it lingered over the hills until dusk.",
    "On the far side of the {R} stood a mill whose wheel had not turned since {P} was a child.",
    "Letters between {T} and the capital took {M} weeks to arrive, longer if the passes were snowed in.",
    "{P} {V} a small {N} for the new schoolhouse, and the children painted it {A} colours.",
    "The orchard outside {T} produced so many apples that half of them were pressed into cider.",
    "According to the {J}, the {A} {N} in the museum had once belonged to a travelling merchant.",
    "Visitors to {T} were always surprised by how quiet the streets became after the bells rang.",
    "In the {S}, the {R} froze so thickly that people skated from one village to the next.",
    "{P} kept a notebook of every bird seen along the {R}, with sketches and the date of each sighting.",
    "The council met in a {A} hall whose walls were lined with portraits of former mayors.",
    "After the {W}, the fields smelled of wet earth, and the farmers hurried to check their fences.",
    "A {J} from a distant province {V} a map of the region that was used for the next hundred years.",
    "The bakery on the corner of the square opened before dawn, and its bread was sold out by eight.",
    "{P} argued that {T} needed a proper harbour, but the merchants preferred the old wooden piers.",
    "Along the towpath of the {R}, {M} lanterns were lit each night by a man whose name nobody knew.",
    "It took the builders {M} years to finish the clock tower, and it has kept perfect time ever since.",
    "The {N} that {P} found in the attic was wrapped in a {A} cloth and tied with faded ribbon.",
    "Rumours spread quickly in {T}, usually faster than the {J} could correct them.",
    "In the {S} the hills turned gold, and painters came from the city to capture the light.",
    "{P} taught the younger apprentices how to mend nets, splice rope and read the colour of the sky.",
};

const char* const kPeople[] = {"Maren", "Tobias", "Ilse", "Corwin", "Adela", "Fenwick", "Rosalind", "Aldous",
                               "Petra", "Jonas", "Wilhelmina", "Silas", "Agnes", "Leopold", "Hester", "Bram"};
const char* const kTowns[] = {"Eastbrook", "Harrowgate", "Millford", "Stonehaven", "Larkspur", "Oakhollow",
                              "Wrenfield", "Ashcombe", "Thornbury", "Glenmoor", "Kestrel Bay", "Fairhaven"};
const char* const kThings[] = {"lantern", "chest", "compass", "bell", "loom", "ledger", "clock", "banner",
                               "cart", "fiddle", "kettle", "telescope", "quilt", "sundial", "barrel", "oar"};
const char* const kAdjectives[] = {"weathered", "bright", "curious", "sturdy", "faded", "polished", "quiet",
                                   "crooked", "handsome", "ancient", "delicate", "plain", "gleaming", "humble"};
const char* const kSeasons[] = {"spring", "summer", "autumn", "winter"};
const char* const kVerbs[] = {"repaired", "carved", "painted", "carried", "built", "restored", "sold", "found",
                              "borrowed", "measured"};
const char* const kWeather[] = {"storm", "fog", "rain", "frost", "heat", "wind", "snow"};
const char* const kJobs[] = {"miller", "schoolteacher", "harbour master", "blacksmith", "physician", "surveyor",
                             "carpenter", "clerk", "weaver", "ferryman"};
const char* const kRivers[] = {"Alder river", "Tarn", "Silverrun", "Marrow river", "Gale brook", "Wend"};
const char* const kNumbers[] = {"three", "four", "five", "six", "seven", "nine", "twelve", "twenty", "forty"};

template <size_t N>
const char* pick(const char* const (&arr)[N], std::mt19937_64& rng) {
  return arr[std::uniform_int_distribution<size_t>(0, N - 1)(rng)];
}

std::string fill(const char* tmpl, std::mt19937_64& rng) {
  std::string out;
  for (const char* p = tmpl; *p; ++p) {
    if (*p == '{' && p[1] && p[2] == '}') {
      switch (p[1]) {
        case 'P': out += pick(kPeople, rng); break;
        case 'T': out += pick(kTowns, rng); break;
        case 'N': out += pick(kThings, rng); break;
        case 'A': out += pick(kAdjectives, rng); break;
        case 'S': out += pick(kSeasons, rng); break;
        case 'V': out += pick(kVerbs, rng); break;
        case 'W': out += pick(kWeather, rng); break;
        case 'J': out += pick(kJobs, rng); break;
        case 'R': out += pick(kRivers, rng); break;
        case 'M': out += pick(kNumbers, rng); break;
        default: out += std::string(p, 3); break;
      }
      p += 2;
    } else {
      out += *p;
    }
  }
  return out;
}

}  // namespace

std::vector<std::string> haystack_sentences(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(fill(pick(kTemplates, rng), rng));
  return out;
}

}  // namespace duo
