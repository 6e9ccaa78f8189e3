"""Build data/twohop/queries.json from the hand-written fact tables below.

Run:  .venv/bin/python mlxinterp/data/twohop/build_queries.py
The output is deterministic: ids follow table order, so appending rows to a
table never renumbers existing items (never reorder or delete rows; retire an
item by moving it to DROPPED with a reason instead).
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("queries.json")

# ---------------------------------------------------------------- entities --
# Country: key -> (display form used inside prompts, aliases).  The display
# form carries "the" where English needs it; the bridge is the bare name.
COUNTRIES = {
    "United States": ("the United States", ["the United States", "USA", "US", "U.S.", "America", "United States of America"]),
    "United Kingdom": ("the United Kingdom", ["the United Kingdom", "UK", "Britain", "Great Britain", "England"]),
    "England": ("England", ["United Kingdom", "the United Kingdom", "UK", "Britain", "Great Britain"]),
    "Czech Republic": ("the Czech Republic", ["the Czech Republic", "Czechia"]),
    "Netherlands": ("the Netherlands", ["the Netherlands", "Holland"]),
    "Philippines": ("the Philippines", ["the Philippines"]),
    "United Arab Emirates": ("the United Arab Emirates", ["the United Arab Emirates", "UAE", "the UAE"]),
    "South Korea": ("South Korea", ["Korea", "Republic of Korea"]),
    "Turkey": ("Turkey", ["Türkiye", "Turkiye"]),
    "Russia": ("Russia", ["Russian Federation"]),
    "China": ("China", ["People's Republic of China", "PRC"]),
    "Burkina Faso": ("Burkina Faso", []),
    "Saudi Arabia": ("Saudi Arabia", []),
}


def country(name: str) -> tuple[str, list[str]]:
    disp, extra = COUNTRIES.get(name, (name, []))
    return disp, [name] + [a for a in extra if a != name]


CAPITALS = {  # country -> (capital, aliases)
    "France": ("Paris", []), "Italy": ("Rome", []), "United States": ("Washington", ["Washington, D.C.", "Washington D.C.", "Washington DC"]),
    "India": ("New Delhi", ["Delhi"]), "China": ("Beijing", ["Peking"]), "Peru": ("Lima", []),
    "Australia": ("Canberra", []), "Brazil": ("Brasília", ["Brasilia"]), "Russia": ("Moscow", []),
    "Greece": ("Athens", []), "United Kingdom": ("London", []), "England": ("London", []),
    "Germany": ("Berlin", []), "Spain": ("Madrid", []), "Jordan": ("Amman", []),
    "Cambodia": ("Phnom Penh", []), "Japan": ("Tokyo", []), "Canada": ("Ottawa", []),
    "Vietnam": ("Hanoi", ["Ha Noi"]), "Poland": ("Warsaw", []), "Czech Republic": ("Prague", []),
    "Turkey": ("Ankara", []), "Austria": ("Vienna", []), "Iceland": ("Reykjavik", ["Reykjavík"]),
    "Chile": ("Santiago", ["Santiago de Chile"]), "South Korea": ("Seoul", []), "Morocco": ("Rabat", []),
    "Ireland": ("Dublin", []), "Belgium": ("Brussels", []), "Denmark": ("Copenhagen", []),
    "Slovenia": ("Ljubljana", []), "Croatia": ("Zagreb", []), "Ecuador": ("Quito", []),
    "Argentina": ("Buenos Aires", []), "Portugal": ("Lisbon", []), "Uruguay": ("Montevideo", []),
    "Norway": ("Oslo", []), "Sweden": ("Stockholm", []), "Hungary": ("Budapest", []),
    "Colombia": ("Bogotá", ["Bogota"]), "Finland": ("Helsinki", []), "Saudi Arabia": ("Riyadh", []),
    "United Arab Emirates": ("Abu Dhabi", []),
}

# ------------------------------------------------------------ fact tables --
# (landmark as used mid-sentence, country, difficulty)
LANDMARK_CAPITAL = [
    ("the Eiffel Tower", "France", "easy"),
    ("the Colosseum", "Italy", "easy"),
    ("the Statue of Liberty", "United States", "easy"),
    ("the Taj Mahal", "India", "easy"),
    ("the Terracotta Army", "China", "easy"),
    ("Machu Picchu", "Peru", "easy"),
    ("the Sydney Opera House", "Australia", "easy"),
    ("the Christ the Redeemer statue", "Brazil", "easy"),
    ("Saint Basil's Cathedral", "Russia", "easy"),
    ("the Acropolis", "Greece", "easy"),
    ("Big Ben", "United Kingdom", "easy"),
    ("Neuschwanstein Castle", "Germany", "easy"),
    ("the Sagrada Familia", "Spain", "easy"),
    ("Petra", "Jordan", "easy"),
    ("Angkor Wat", "Cambodia", "easy"),
    ("Mount Fuji", "Japan", "easy"),
    ("the CN Tower", "Canada", "easy"),
    ("the Leaning Tower of Pisa", "Italy", "easy"),
    ("the Golden Gate Bridge", "United States", "easy"),
    ("Stonehenge", "United Kingdom", "easy"),
    ("the Alhambra", "Spain", "hard"),
    ("Ha Long Bay", "Vietnam", "hard"),
    ("Wawel Castle", "Poland", "hard"),
    ("the Charles Bridge", "Czech Republic", "hard"),
    ("Hagia Sophia", "Turkey", "hard"),
    ("Pamukkale", "Turkey", "hard"),
    ("Uluru", "Australia", "hard"),
    ("Schönbrunn Palace", "Austria", "hard"),
    ("Hallgrímskirkja", "Iceland", "hard"),
    ("the Moai statues of Easter Island", "Chile", "hard"),
    ("Kinkaku-ji", "Japan", "hard"),
    ("Gyeongbokgung Palace", "South Korea", "hard"),
    ("the Hassan II Mosque", "Morocco", "hard"),
    ("the Cliffs of Moher", "Ireland", "hard"),
    ("the Atomium", "Belgium", "hard"),
    ("the Little Mermaid statue", "Denmark", "hard"),
    ("Lake Bled", "Slovenia", "hard"),
    ("the Plitvice Lakes", "Croatia", "hard"),
    ("Meteora", "Greece", "hard"),
    ("the Galápagos Islands", "Ecuador", "hard"),
    ("the Perito Moreno Glacier", "Argentina", "hard"),
    ("Mont Saint-Michel", "France", "hard"),
]

CURRENCIES = {  # country -> (currency, aliases)
    "Japan": ("yen", ["Japanese yen"]), "India": ("rupee", ["Indian rupee", "rupees"]),
    "Egypt": ("pound", ["Egyptian pound"]), "United Kingdom": ("pound", ["pound sterling", "British pound", "sterling"]),
    "China": ("yuan", ["renminbi", "Chinese yuan", "RMB"]), "Russia": ("ruble", ["rouble", "Russian ruble", "Russian rouble"]),
    "Brazil": ("real", ["Brazilian real", "reais"]), "Mexico": ("peso", ["Mexican peso"]),
    "France": ("euro", ["Euro", "euros"]), "Italy": ("euro", ["Euro", "euros"]), "Germany": ("euro", ["Euro", "euros"]),
    "Greece": ("euro", ["Euro", "euros"]), "Ireland": ("euro", ["Euro", "euros"]), "Portugal": ("euro", ["Euro", "euros"]),
    "Austria": ("euro", ["Euro", "euros"]),
    "United States": ("dollar", ["US dollar", "U.S. dollar", "United States dollar", "American dollar"]),
    "Australia": ("dollar", ["Australian dollar"]), "Singapore": ("dollar", ["Singapore dollar"]),
    "United Arab Emirates": ("dirham", ["UAE dirham", "Emirati dirham"]), "Switzerland": ("franc", ["Swiss franc"]),
    "South Korea": ("won", ["South Korean won", "Korean won"]), "Thailand": ("baht", ["Thai baht"]),
    "Turkey": ("lira", ["Turkish lira"]), "Sweden": ("krona", ["Swedish krona", "kronor"]),
    "Denmark": ("krone", ["Danish krone", "kroner"]), "Norway": ("krone", ["Norwegian krone", "kroner"]),
    "Poland": ("zloty", ["złoty", "Polish zloty", "Polish złoty"]), "Hungary": ("forint", ["Hungarian forint"]),
    "Czech Republic": ("koruna", ["Czech koruna", "crown", "Czech crown"]), "Vietnam": ("dong", ["đồng", "Vietnamese dong"]),
    "Indonesia": ("rupiah", ["Indonesian rupiah"]), "Malaysia": ("ringgit", ["Malaysian ringgit"]),
    "South Africa": ("rand", ["South African rand"]), "Jordan": ("dinar", ["Jordanian dinar"]),
    "Morocco": ("dirham", ["Moroccan dirham"]), "Iceland": ("krona", ["króna", "Icelandic krona", "Icelandic króna"]),
    "Philippines": ("peso", ["Philippine peso"]), "Kenya": ("shilling", ["Kenyan shilling"]),
}

LANDMARK_CURRENCY = [
    ("Mount Fuji", "Japan", "easy"),
    ("the Taj Mahal", "India", "easy"),
    ("the Great Pyramid of Giza", "Egypt", "easy"),
    ("Big Ben", "United Kingdom", "easy"),
    ("the Forbidden City", "China", "easy"),
    ("Red Square", "Russia", "easy"),
    ("the Christ the Redeemer statue", "Brazil", "easy"),
    ("Chichen Itza", "Mexico", "easy"),
    ("the Eiffel Tower", "France", "easy"),
    ("the Colosseum", "Italy", "easy"),
    ("the Statue of Liberty", "United States", "easy"),
    ("the Sydney Opera House", "Australia", "easy"),
    ("the Burj Khalifa", "United Arab Emirates", "easy"),
    ("Neuschwanstein Castle", "Germany", "easy"),
    ("the Acropolis", "Greece", "easy"),
    ("the Chapel Bridge in Lucerne", "Switzerland", "hard"),
    ("Gyeongbokgung Palace", "South Korea", "hard"),
    ("the temple of Wat Arun", "Thailand", "hard"),
    ("Hagia Sophia", "Turkey", "hard"),
    ("the Vasa Museum", "Sweden", "hard"),
    ("the Nyhavn waterfront", "Denmark", "hard"),
    ("Wawel Castle", "Poland", "hard"),
    ("Fisherman's Bastion", "Hungary", "hard"),
    ("the Charles Bridge", "Czech Republic", "hard"),
    ("Ha Long Bay", "Vietnam", "hard"),
    ("Borobudur", "Indonesia", "hard"),
    ("the Petronas Towers", "Malaysia", "hard"),
    ("Table Mountain", "South Africa", "hard"),
    ("Petra", "Jordan", "hard"),
    ("the Hassan II Mosque", "Morocco", "hard"),
    ("the Geirangerfjord", "Norway", "hard"),
    ("Hallgrímskirkja", "Iceland", "hard"),
    ("the Chocolate Hills", "Philippines", "hard"),
    ("the Masai Mara", "Kenya", "hard"),
    ("Marina Bay Sands", "Singapore", "hard"),
    ("the Cliffs of Moher", "Ireland", "hard"),
    ("Belém Tower", "Portugal", "hard"),
    ("Schönbrunn Palace", "Austria", "hard"),
]

LANGUAGES = {  # country -> (official language, aliases); single-national-language countries only
    "France": ("French", []), "Italy": ("Italian", []), "Germany": ("German", []), "Japan": ("Japanese", []),
    "Brazil": ("Portuguese", ["Brazilian Portuguese"]), "Russia": ("Russian", []), "Greece": ("Greek", ["Modern Greek"]),
    "Egypt": ("Arabic", []), "China": ("Chinese", ["Mandarin", "Mandarin Chinese", "Standard Chinese", "Putonghua"]),
    "Spain": ("Spanish", ["Castilian"]), "Turkey": ("Turkish", []), "Thailand": ("Thai", []),
    "Portugal": ("Portuguese", []), "Poland": ("Polish", []), "Hungary": ("Hungarian", ["Magyar"]),
    "Vietnam": ("Vietnamese", []), "Indonesia": ("Indonesian", ["Bahasa Indonesia"]), "Iran": ("Persian", ["Farsi"]),
    "Cambodia": ("Khmer", []), "South Korea": ("Korean", []), "Sweden": ("Swedish", []), "Jordan": ("Arabic", []),
    "Croatia": ("Croatian", []), "Romania": ("Romanian", []), "Bulgaria": ("Bulgarian", []),
    "Slovenia": ("Slovene", ["Slovenian"]), "Iceland": ("Icelandic", []), "Denmark": ("Danish", []),
    "Czech Republic": ("Czech", []), "Netherlands": ("Dutch", []), "Austria": ("German", ["Austrian German"]),
}

LANDMARK_LANGUAGE = [
    ("the Eiffel Tower", "France", "easy"),
    ("the Colosseum", "Italy", "easy"),
    ("Neuschwanstein Castle", "Germany", "easy"),
    ("Mount Fuji", "Japan", "easy"),
    ("the Christ the Redeemer statue", "Brazil", "easy"),
    ("Red Square", "Russia", "easy"),
    ("the Acropolis", "Greece", "easy"),
    ("the Great Pyramid of Giza", "Egypt", "easy"),
    ("the Forbidden City", "China", "easy"),
    ("the Alhambra", "Spain", "easy"),
    ("Hagia Sophia", "Turkey", "easy"),
    ("the Leaning Tower of Pisa", "Italy", "easy"),
    ("the temple of Wat Arun", "Thailand", "hard"),
    ("Belém Tower", "Portugal", "hard"),
    ("Wawel Castle", "Poland", "hard"),
    ("Fisherman's Bastion", "Hungary", "hard"),
    ("Ha Long Bay", "Vietnam", "hard"),
    ("Borobudur", "Indonesia", "hard"),
    ("Persepolis", "Iran", "hard"),
    ("Angkor Wat", "Cambodia", "hard"),
    ("Gyeongbokgung Palace", "South Korea", "hard"),
    ("the Vasa Museum", "Sweden", "hard"),
    ("Petra", "Jordan", "hard"),
    ("the Plitvice Lakes", "Croatia", "hard"),
    ("Bran Castle", "Romania", "hard"),
    ("the Rila Monastery", "Bulgaria", "hard"),
    ("Lake Bled", "Slovenia", "hard"),
    ("Hallgrímskirkja", "Iceland", "hard"),
    ("the Nyhavn waterfront", "Denmark", "hard"),
    ("the Charles Bridge", "Czech Republic", "hard"),
    ("the Anne Frank House", "Netherlands", "hard"),
    ("Schönbrunn Palace", "Austria", "hard"),
    ("Kinkaku-ji", "Japan", "hard"),
]

STATE_CAPITALS = {
    "California": "Sacramento", "Illinois": "Springfield", "Florida": "Tallahassee", "Texas": "Austin",
    "Washington": "Olympia", "Nevada": "Carson City", "Louisiana": "Baton Rouge", "Michigan": "Lansing",
    "Pennsylvania": "Harrisburg", "Maryland": "Annapolis", "Tennessee": "Nashville", "Ohio": "Columbus",
    "Wisconsin": "Madison", "Missouri": "Jefferson City", "Minnesota": "Saint Paul", "Alaska": "Juneau",
    "Arizona": "Phoenix", "New Mexico": "Santa Fe", "Nebraska": "Lincoln", "Kansas": "Topeka",
    "Kentucky": "Frankfort", "North Dakota": "Bismarck", "South Dakota": "Pierre", "Montana": "Helena",
    "Georgia": "Atlanta", "New York": "Albany", "New Jersey": "Trenton", "North Carolina": "Raleigh",
    "Mississippi": "Jackson", "Utah": "Salt Lake City", "Alabama": "Montgomery", "South Carolina": "Columbia",
    "Virginia": "Richmond", "Maine": "Augusta", "Wyoming": "Cheyenne", "Idaho": "Boise", "Iowa": "Des Moines",
    "Hawaii": "Honolulu", "Massachusetts": "Boston", "New Hampshire": "Concord",
}
STATE_ALIASES = {"Washington": ["Washington State", "Washington state"], "New York": ["New York State", "New York state"],
                 "Georgia": ["the state of Georgia"]}
STATE_CAPITAL_ALIASES = {"Saint Paul": ["St. Paul", "St Paul"]}

USCITY = [  # (city, state, difficulty)
    ("Los Angeles", "California", "easy"),
    ("Chicago", "Illinois", "easy"),
    ("Miami", "Florida", "easy"),
    ("Houston", "Texas", "easy"),
    ("Seattle", "Washington", "easy"),
    ("Las Vegas", "Nevada", "easy"),
    ("New Orleans", "Louisiana", "easy"),
    ("Detroit", "Michigan", "easy"),
    ("Philadelphia", "Pennsylvania", "easy"),
    ("San Francisco", "California", "easy"),
    ("Dallas", "Texas", "easy"),
    ("Pittsburgh", "Pennsylvania", "easy"),
    ("Baltimore", "Maryland", "easy"),
    ("Memphis", "Tennessee", "easy"),
    ("Cleveland", "Ohio", "easy"),
    ("Milwaukee", "Wisconsin", "easy"),
    ("St. Louis", "Missouri", "easy"),
    ("Minneapolis", "Minnesota", "easy"),
    ("Tucson", "Arizona", "hard"),
    ("Albuquerque", "New Mexico", "hard"),
    ("Omaha", "Nebraska", "hard"),
    ("Wichita", "Kansas", "hard"),
    ("Louisville", "Kentucky", "hard"),
    ("Fargo", "North Dakota", "hard"),
    ("Sioux Falls", "South Dakota", "hard"),
    ("Billings", "Montana", "hard"),
    ("Spokane", "Washington", "hard"),
    ("Reno", "Nevada", "hard"),
    ("Savannah", "Georgia", "hard"),
    ("Buffalo", "New York", "hard"),
    ("Jersey City", "New Jersey", "hard"),
    ("Charlotte", "North Carolina", "hard"),
    ("Biloxi", "Mississippi", "hard"),
    ("Provo", "Utah", "hard"),
    ("Birmingham", "Alabama", "hard"),
    ("Myrtle Beach", "South Carolina", "hard"),
    ("Norfolk", "Virginia", "hard"),
    ("Bangor", "Maine", "hard"),
    ("Casper", "Wyoming", "hard"),
    ("Pocatello", "Idaho", "hard"),
    ("Cedar Rapids", "Iowa", "hard"),
    ("Hilo", "Hawaii", "hard"),
    ("Worcester", "Massachusetts", "hard"),
    ("Nashua", "New Hampshire", "hard"),
    ("Anchorage", "Alaska", "hard"),
]

# (work as used mid-sentence, hop1 verb, author, author aliases, country, difficulty)
BOOKS = [
    ("the novel War and Peace", "written by", "Leo Tolstoy", ["Tolstoy", "Lev Tolstoy"], "Russia", "easy"),
    ("the novel Crime and Punishment", "written by", "Fyodor Dostoevsky", ["Dostoevsky", "Dostoyevsky"], "Russia", "easy"),
    ("the novel Don Quixote", "written by", "Miguel de Cervantes", ["Cervantes"], "Spain", "easy"),
    ("the novel Les Misérables", "written by", "Victor Hugo", ["Hugo"], "France", "easy"),
    ("the play Faust", "written by", "Johann Wolfgang von Goethe", ["Goethe"], "Germany", "easy"),
    ("the Divine Comedy", "written by", "Dante Alighieri", ["Dante"], "Italy", "easy"),
    ("the novel One Hundred Years of Solitude", "written by", "Gabriel García Márquez", ["García Márquez", "Gabriel Garcia Marquez", "Gabo"], "Colombia", "easy"),
    ("the novel Pride and Prejudice", "written by", "Jane Austen", ["Austen"], "England", "easy"),
    ("the novel Oliver Twist", "written by", "Charles Dickens", ["Dickens"], "England", "easy"),
    ("the book The Little Prince", "written by", "Antoine de Saint-Exupéry", ["Saint-Exupéry", "Saint-Exupery"], "France", "easy"),
    ("the novel The Alchemist", "written by", "Paulo Coelho", ["Coelho"], "Brazil", "easy"),
    ("the book The Adventures of Pinocchio", "written by", "Carlo Collodi", ["Collodi"], "Italy", "easy"),
    ("the novel Twenty Thousand Leagues Under the Seas", "written by", "Jules Verne", ["Verne"], "France", "easy"),
    ("the novel Norwegian Wood", "written by", "Haruki Murakami", ["Murakami"], "Japan", "easy"),
    ("the novel Dracula", "written by", "Bram Stoker", ["Stoker"], "Ireland", "easy"),
    ("the book Pippi Longstocking", "written by", "Astrid Lindgren", ["Lindgren"], "Sweden", "easy"),
    ("the novel Ulysses", "written by", "James Joyce", ["Joyce"], "Ireland", "easy"),
    ("the novel Things Fall Apart", "written by", "Chinua Achebe", ["Achebe"], "Nigeria", "easy"),
    ("the novel The Count of Monte Cristo", "written by", "Alexandre Dumas", ["Dumas"], "France", "easy"),
    ("the novel Doctor Zhivago", "written by", "Boris Pasternak", ["Pasternak"], "Russia", "hard"),
    ("the novel The Name of the Rose", "written by", "Umberto Eco", ["Eco"], "Italy", "hard"),
    ("the novel Madame Bovary", "written by", "Gustave Flaubert", ["Flaubert"], "France", "hard"),
    ("the novel The Magic Mountain", "written by", "Thomas Mann", ["Mann"], "Germany", "hard"),
    ("the play A Doll's House", "written by", "Henrik Ibsen", ["Ibsen"], "Norway", "hard"),
    ("the story collection Ficciones", "written by", "Jorge Luis Borges", ["Borges"], "Argentina", "hard"),
    ("The Tale of Genji", "written by", "Murasaki Shikibu", ["Lady Murasaki", "Murasaki"], "Japan", "hard"),
    ("the novel Palace Walk", "written by", "Naguib Mahfouz", ["Mahfouz", "Najib Mahfuz"], "Egypt", "hard"),
    ("The Book of Disquiet", "written by", "Fernando Pessoa", ["Pessoa"], "Portugal", "hard"),
    ("the novel Pedro Páramo", "written by", "Juan Rulfo", ["Rulfo"], "Mexico", "hard"),
    ("the novel Dom Casmurro", "written by", "Machado de Assis", ["Joaquim Maria Machado de Assis"], "Brazil", "hard"),
    ("the novel Heidi", "written by", "Johanna Spyri", ["Spyri"], "Switzerland", "hard"),
    ("the novel The Handmaid's Tale", "written by", "Margaret Atwood", ["Atwood"], "Canada", "hard"),
    ("the novel Anne of Green Gables", "written by", "L. M. Montgomery", ["Lucy Maud Montgomery", "L.M. Montgomery", "Montgomery"], "Canada", "hard"),
    ("the novel Sophie's World", "written by", "Jostein Gaarder", ["Gaarder"], "Norway", "hard"),
    ("the novel The Girl with the Dragon Tattoo", "written by", "Stieg Larsson", ["Larsson"], "Sweden", "hard"),
    ("the poetry collection Gitanjali", "written by", "Rabindranath Tagore", ["Tagore"], "India", "hard"),
    ("the novel Midnight's Children", "written by", "Salman Rushdie", ["Rushdie"], "India", "hard"),
    ("the novel Perfume: The Story of a Murderer", "written by", "Patrick Süskind", ["Süskind", "Suskind", "Patrick Suskind"], "Germany", "hard"),
    ("the novel The Neverending Story", "written by", "Michael Ende", ["Ende"], "Germany", "hard"),
    ("the novel The Shadow of the Wind", "written by", "Carlos Ruiz Zafón", ["Ruiz Zafón", "Carlos Ruiz Zafon", "Zafón"], "Spain", "hard"),
    ("the verse novel Eugene Onegin", "written by", "Alexander Pushkin", ["Pushkin"], "Russia", "hard"),
    ("the novel Fathers and Sons", "written by", "Ivan Turgenev", ["Turgenev"], "Russia", "hard"),
    ("the novel Snow Country", "written by", "Yasunari Kawabata", ["Kawabata"], "Japan", "hard"),
    ("the fairy tale The Little Mermaid", "written by", "Hans Christian Andersen", ["Andersen", "H. C. Andersen"], "Denmark", "hard"),
    ("the book Gulliver's Travels", "written by", "Jonathan Swift", ["Swift"], "Ireland", "hard"),
]

# (work as used mid-sentence, hop1 verb, artist, aliases, birth country, difficulty)
ARTWORKS = [
    ("the Mona Lisa", "painted by", "Leonardo da Vinci", ["Leonardo", "da Vinci"], "Italy", "easy"),
    ("the painting The Starry Night", "painted by", "Vincent van Gogh", ["Van Gogh", "van Gogh"], "Netherlands", "easy"),
    ("the painting The Scream", "painted by", "Edvard Munch", ["Munch"], "Norway", "easy"),
    ("the painting Guernica", "painted by", "Pablo Picasso", ["Picasso"], "Spain", "easy"),
    ("the painting The Persistence of Memory", "painted by", "Salvador Dalí", ["Dalí", "Dali", "Salvador Dali"], "Spain", "easy"),
    ("the painting Girl with a Pearl Earring", "painted by", "Johannes Vermeer", ["Vermeer", "Jan Vermeer"], "Netherlands", "easy"),
    ("the painting The Night Watch", "painted by", "Rembrandt", ["Rembrandt van Rijn"], "Netherlands", "easy"),
    ("the Water Lilies series", "painted by", "Claude Monet", ["Monet"], "France", "easy"),
    ("the print The Great Wave off Kanagawa", "made by", "Hokusai", ["Katsushika Hokusai"], "Japan", "easy"),
    ("the painting Las Meninas", "painted by", "Diego Velázquez", ["Velázquez", "Velazquez", "Diego Velazquez"], "Spain", "easy"),
    ("the fresco The Creation of Adam", "painted by", "Michelangelo", ["Michelangelo Buonarroti"], "Italy", "easy"),
    ("the fresco The School of Athens", "painted by", "Raphael", ["Raffaello Sanzio", "Raffaello"], "Italy", "easy"),
    ("the sculpture The Thinker", "made by", "Auguste Rodin", ["Rodin"], "France", "easy"),
    ("the painting The Two Fridas", "painted by", "Frida Kahlo", ["Kahlo"], "Mexico", "easy"),
    ("the painting The Son of Man", "painted by", "René Magritte", ["Magritte", "Rene Magritte"], "Belgium", "hard"),
    ("the painting The Garden of Earthly Delights", "painted by", "Hieronymus Bosch", ["Bosch"], "Netherlands", "hard"),
    ("the painting Liberty Leading the People", "painted by", "Eugène Delacroix", ["Delacroix", "Eugene Delacroix"], "France", "hard"),
    ("the painting The Third of May 1808", "painted by", "Francisco Goya", ["Goya", "Francisco de Goya"], "Spain", "hard"),
    ("the painting A Sunday Afternoon on the Island of La Grande Jatte", "painted by", "Georges Seurat", ["Seurat"], "France", "hard"),
    ("the painting Luncheon of the Boating Party", "painted by", "Pierre-Auguste Renoir", ["Renoir", "Auguste Renoir"], "France", "hard"),
    ("the painting Composition with Red, Blue and Yellow", "painted by", "Piet Mondrian", ["Mondrian"], "Netherlands", "hard"),
    ("the painting The Hay Wain", "painted by", "John Constable", ["Constable"], "England", "hard"),
    ("the painting The Fighting Temeraire", "painted by", "J. M. W. Turner", ["Turner", "J.M.W. Turner", "William Turner"], "England", "hard"),
    ("the painting Composition VIII", "painted by", "Wassily Kandinsky", ["Kandinsky", "Vasily Kandinsky"], "Russia", "hard"),
    ("the painting Primavera", "painted by", "Sandro Botticelli", ["Botticelli"], "Italy", "hard"),
    ("the painting Portrait of Adele Bloch-Bauer I", "painted by", "Gustav Klimt", ["Klimt"], "Austria", "hard"),
    ("the painting The Gleaners", "painted by", "Jean-François Millet", ["Millet", "Jean-Francois Millet"], "France", "hard"),
    ("the painting The Ambassadors", "painted by", "Hans Holbein the Younger", ["Holbein", "Hans Holbein"], "Germany", "hard"),
    ("the engraving Melencolia I", "made by", "Albrecht Dürer", ["Dürer", "Durer", "Albrecht Durer"], "Germany", "hard"),
    ("the painting The Calling of Saint Matthew", "painted by", "Caravaggio", ["Michelangelo Merisi da Caravaggio"], "Italy", "hard"),
    ("the painting The Blue Boy", "painted by", "Thomas Gainsborough", ["Gainsborough"], "England", "hard"),
]

CONTINENTS = {"Africa": [], "Asia": [], "Europe": [], "South America": [], "North America": []}

# (capital, capital aliases, country, continent, difficulty)
CAPITAL_CONTINENT = [
    ("Nairobi", [], "Kenya", "Africa", "easy"),
    ("Addis Ababa", [], "Ethiopia", "Africa", "easy"),
    ("Accra", [], "Ghana", "Africa", "easy"),
    ("Rabat", [], "Morocco", "Africa", "easy"),
    ("Tokyo", [], "Japan", "Asia", "easy"),
    ("Seoul", [], "South Korea", "Asia", "easy"),
    ("Bangkok", [], "Thailand", "Asia", "easy"),
    ("Hanoi", [], "Vietnam", "Asia", "easy"),
    ("New Delhi", [], "India", "Asia", "easy"),
    ("Lisbon", [], "Portugal", "Europe", "easy"),
    ("Warsaw", [], "Poland", "Europe", "easy"),
    ("Vienna", [], "Austria", "Europe", "easy"),
    ("Dublin", [], "Ireland", "Europe", "easy"),
    ("Lima", [], "Peru", "South America", "easy"),
    ("Buenos Aires", [], "Argentina", "South America", "easy"),
    ("Bogotá", ["Bogota"], "Colombia", "South America", "easy"),
    ("Ottawa", [], "Canada", "North America", "easy"),
    ("Dakar", [], "Senegal", "Africa", "hard"),
    ("Kampala", [], "Uganda", "Africa", "hard"),
    ("Lusaka", [], "Zambia", "Africa", "hard"),
    ("Harare", [], "Zimbabwe", "Africa", "hard"),
    ("Bamako", [], "Mali", "Africa", "hard"),
    ("Windhoek", [], "Namibia", "Africa", "hard"),
    ("Gaborone", [], "Botswana", "Africa", "hard"),
    ("Antananarivo", [], "Madagascar", "Africa", "hard"),
    ("Kigali", [], "Rwanda", "Africa", "hard"),
    ("Luanda", [], "Angola", "Africa", "hard"),
    ("Maputo", [], "Mozambique", "Africa", "hard"),
    ("Ouagadougou", [], "Burkina Faso", "Africa", "hard"),
    ("Kathmandu", [], "Nepal", "Asia", "hard"),
    ("Dhaka", [], "Bangladesh", "Asia", "hard"),
    ("Ulaanbaatar", ["Ulan Bator"], "Mongolia", "Asia", "hard"),
    ("Vientiane", [], "Laos", "Asia", "hard"),
    ("Thimphu", [], "Bhutan", "Asia", "hard"),
    ("Tashkent", [], "Uzbekistan", "Asia", "hard"),
    ("Riyadh", [], "Saudi Arabia", "Asia", "hard"),
    ("Vilnius", [], "Lithuania", "Europe", "hard"),
    ("Riga", [], "Latvia", "Europe", "hard"),
    ("Tallinn", [], "Estonia", "Europe", "hard"),
    ("Ljubljana", [], "Slovenia", "Europe", "hard"),
    ("Bratislava", [], "Slovakia", "Europe", "hard"),
    ("Bucharest", [], "Romania", "Europe", "hard"),
    ("Montevideo", [], "Uruguay", "South America", "hard"),
    ("Asunción", ["Asuncion"], "Paraguay", "South America", "hard"),
    ("Quito", [], "Ecuador", "South America", "hard"),
    ("Paramaribo", [], "Suriname", "South America", "hard"),
    ("Georgetown", [], "Guyana", "South America", "hard"),
]

# (club as used after "the football club", country, difficulty)
CLUBS = [
    ("Juventus", "Italy", "easy"),
    ("Bayern Munich", "Germany", "easy"),
    ("Manchester United", "England", "easy"),
    ("Liverpool", "England", "easy"),
    ("FC Barcelona", "Spain", "easy"),
    ("Borussia Dortmund", "Germany", "easy"),
    ("Inter Milan", "Italy", "easy"),
    ("AC Milan", "Italy", "easy"),
    ("Benfica", "Portugal", "easy"),
    ("FC Porto", "Portugal", "easy"),
    ("Boca Juniors", "Argentina", "easy"),
    ("Galatasaray", "Turkey", "easy"),
    ("Flamengo", "Brazil", "easy"),
    ("Olympique de Marseille", "France", "easy"),
    ("Fenerbahçe", "Turkey", "hard"),
    ("Olympiacos", "Greece", "hard"),
    ("Anderlecht", "Belgium", "hard"),
    ("Club Brugge", "Belgium", "hard"),
    ("Sevilla", "Spain", "hard"),
    ("Napoli", "Italy", "hard"),
    ("Schalke 04", "Germany", "hard"),
    ("Peñarol", "Uruguay", "hard"),
    ("Santos", "Brazil", "hard"),
    ("Corinthians", "Brazil", "hard"),
    ("Rosenborg", "Norway", "hard"),
    ("Malmö FF", "Sweden", "hard"),
    ("Ferencváros", "Hungary", "hard"),
    ("Zenit Saint Petersburg", "Russia", "hard"),
    ("Olympique Lyonnais", "France", "hard"),
    ("Red Bull Salzburg", "Austria", "hard"),
    ("Urawa Red Diamonds", "Japan", "hard"),
    ("Colo-Colo", "Chile", "hard"),
    ("Atlético Nacional", "Colombia", "hard"),
]

# (company as used after "the company", country, difficulty)
COMPANIES = [
    ("Toyota", "Japan", "easy"),
    ("Samsung", "South Korea", "easy"),
    ("Volkswagen", "Germany", "easy"),
    ("Nokia", "Finland", "easy"),
    ("Sony", "Japan", "easy"),
    ("Hyundai", "South Korea", "easy"),
    ("BMW", "Germany", "easy"),
    ("Huawei", "China", "easy"),
    ("Lego", "Denmark", "easy"),
    ("Volvo", "Sweden", "easy"),
    ("Nintendo", "Japan", "easy"),
    ("Renault", "France", "easy"),
    ("Adidas", "Germany", "easy"),
    ("Ericsson", "Sweden", "hard"),
    ("Michelin", "France", "hard"),
    ("Petrobras", "Brazil", "hard"),
    ("Embraer", "Brazil", "hard"),
    ("Aramco", "Saudi Arabia", "hard"),
    ("Infosys", "India", "hard"),
    ("Wipro", "India", "hard"),
    ("Škoda Auto", "Czech Republic", "hard"),
    ("Carlsberg", "Denmark", "hard"),
    ("Inditex", "Spain", "hard"),
    ("Pirelli", "Italy", "hard"),
    ("Barilla", "Italy", "hard"),
    ("Alibaba", "China", "hard"),
    ("Maersk", "Denmark", "hard"),
    ("Kone", "Finland", "hard"),
    ("Novo Nordisk", "Denmark", "hard"),
    ("Ducati", "Italy", "hard"),
]

# Facts considered and left out (kept for the record; see README).
DROPPED = [
    ("landmark_currency", "Machu Picchu -> Peru -> sol", "currency renamed from 'nuevo sol' to 'sol' in 2015"),
    ("landmark_language", "Chichen Itza -> Mexico -> Spanish", "Mexico has no de jure official language"),
    ("landmark_language", "Machu Picchu -> Peru -> Spanish", "Quechua and Aymara are co-official"),
    ("landmark_capital", "Borobudur -> Indonesia -> Jakarta", "capital being moved to Nusantara"),
    ("landmark_capital", "Kilimanjaro -> Tanzania", "Dodoma vs Dar es Salaam"),
    ("landmark_capital", "Table Mountain -> South Africa", "three capitals"),
    ("landmark_capital", "Chichen Itza -> Mexico -> Mexico City", "answer starts with the bridge token"),
    ("artwork_artist_country", "The Kiss", "Klimt and Hayez both painted a famous 'The Kiss'"),
    ("artwork_artist_country", "The Birth of Venus", "Botticelli and Cabanel"),
    ("artwork_artist_country", "Wanderer above the Sea of Fog", "Friedrich born in Swedish Pomerania"),
    ("book_author_country", "The Hobbit -> Tolkien", "born in South Africa, nationality British"),
    ("book_author_country", "The Metamorphosis -> Kafka", "born in Austria-Hungary, now Czech Republic"),
    ("book_author_country", "The Stranger -> Camus", "born in French Algeria"),
    ("book_author_country", "The Master and Margarita -> Bulgakov", "born in Kyiv"),
    ("book_author_country", "The House of the Spirits -> Allende", "Chilean, born in Peru"),
    ("club_country_capital", "River Plate", "clubs of that name in Argentina and Uruguay"),
    ("club_country_capital", "Ajax / PSV / Feyenoord", "Amsterdam vs The Hague"),
    ("club_country_capital", "Al Ahly -> Egypt -> Cairo", "new administrative capital under construction"),
    ("company_country_capital", "IKEA", "Swedish origin, Dutch holding companies"),
    ("company_country_capital", "Nestlé / Rolex", "Switzerland has no de jure capital"),
    ("company_country_capital", "Tata Motors", "demerged 2025"),
    ("company_country_capital", "Emirates (airline)", "company name contains the bridge"),
    ("company_country_capital", "Chanel", "headquartered in London, French origin"),
]

# ---------------------------------------------------------------- builders --
FAMILIES = {
    "landmark_capital": "Capital of the country where landmark X is located (landmark -> country -> capital).",
    "landmark_currency": "Currency of the country where landmark X is located (landmark -> country -> currency).",
    "landmark_language": "Official language of the country where landmark X is located (landmark -> country -> language); only countries with one national official language.",
    "uscity_state_capital": "Capital of the US state containing city X (city -> state -> state capital).",
    "book_author_country": "Country of birth of the author of book X (work -> author -> modern country of birth).",
    "artwork_artist_country": "Country of birth of the artist who made artwork X (work -> artist -> modern country of birth).",
    "capital_continent": "Continent of the country whose capital is X (capital -> country -> continent).",
    "club_country_capital": "Capital of the country where football club X is based (club -> country -> capital).",
    "company_country_capital": "Capital of the country where company X is headquartered (company -> country -> capital).",
}


# Landmark names that take a plural verb ("the Cliffs of Moher are located ...").
PLURAL_LANDMARKS = {
    "the Moai statues of Easter Island", "the Cliffs of Moher", "the Plitvice Lakes", "the Galápagos Islands",
    "the Petronas Towers", "the Chocolate Hills",
}

# Born before 1801 in England: "United Kingdom" would be anachronistic, so the
# creator families accept only these names for England.
ENGLAND_BIRTH_ALIASES = ["England", "Britain", "Great Britain"]


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def uniq(xs):
    out = []
    for x in xs:
        if x and x not in out:
            out.append(x)
    return out


def item(family, n, diff, prompt, bridge, b_al, answer, a_al, hop1, hop2):
    return {
        "id": f"{family}_{n:03d}", "family": family, "difficulty": diff, "prompt": prompt,
        "bridge": bridge, "answer": answer,
        "answer_aliases": uniq([answer] + a_al), "bridge_aliases": uniq([bridge] + b_al),
        "hop1_prompt": hop1, "hop2_prompt": hop2,
    }


def build():
    items = []

    def add(family, rows, fn):
        for n, row in enumerate(rows, 1):
            items.append(fn(family, n, *row))

    def landmark(table, prompt_t, hop2_t):
        def f(family, n, lm, c, diff):
            disp, c_al = country(c)
            ans, a_al = table[c]
            verb = "are" if lm in PLURAL_LANDMARKS else "is"
            return item(family, n, diff, prompt_t.format(x=lm, v=verb), c, c_al, ans, a_al,
                        f"{cap(lm)} {verb} located in the country of", hop2_t.format(c=disp))
        return f

    add("landmark_capital", LANDMARK_CAPITAL, landmark(
        CAPITALS, "The capital of the country where {x} {v} located is", "The capital of {c} is"))
    add("landmark_currency", LANDMARK_CURRENCY, landmark(
        CURRENCIES, "The currency of the country where {x} {v} located is the", "The currency of {c} is the"))
    add("landmark_language", LANDMARK_LANGUAGE, landmark(
        LANGUAGES, "The official language of the country where {x} {v} located is", "The official language of {c} is"))

    def uscity(family, n, city, state, diff):
        ans = STATE_CAPITALS[state]
        return item(family, n, diff, f"The capital of the US state where {city} is located is", state,
                    STATE_ALIASES.get(state, []), ans, STATE_CAPITAL_ALIASES.get(ans, []),
                    f"{city} is a city in the US state of", f"The capital of the state of {state} is")
    add("uscity_state_capital", USCITY, uscity)

    def creator(lead):
        def f(family, n, work, verb, person, p_al, c, diff):
            disp, c_al = country(c)
            if c == "England":
                c_al = ENGLAND_BIRTH_ALIASES
            return item(family, n, diff, f"{lead} {work} was born in the country of", person, p_al,
                        c, c_al, f"{cap(work)} was {verb}", f"{person} was born in the country of")
        return f
    add("book_author_country", BOOKS, creator("The author of"))
    add("artwork_artist_country", ARTWORKS, creator("The artist who created"))

    def continent(family, n, capital, cap_al, c, cont, diff):
        disp, c_al = country(c)
        return item(family, n, diff, f"The country whose capital is {capital} is located on the continent of",
                    c, c_al, cont, CONTINENTS[cont], f"{capital} is the capital of",
                    f"{cap(disp)} is located on the continent of")
    add("capital_continent", CAPITAL_CONTINENT, continent)

    def org(kind, verb):
        def f(family, n, name, c, diff):
            disp, c_al = country(c)
            ans, a_al = CAPITALS[c]
            return item(family, n, diff, f"The capital of the country where the {kind} {name} is {verb} is",
                        c, c_al, ans, a_al, f"The {kind} {name} is {verb} in the country of",
                        f"The capital of {disp} is")
        return f
    add("club_country_capital", CLUBS, org("football club", "based"))
    add("company_country_capital", COMPANIES, org("company", "headquartered"))

    return {
        "version": 1,
        "created": "2026-11-23",
        "provenance": (
            "Hand-written for mlxinterp issue 5 (two-hop reasoning, back-patching, cross-prompt patching). "
            "Facts were chosen and checked by the author from general knowledge (no model generated or "
            "verified them); items with disputed, multiple or recently changed answers were left out. "
            "Generated from the fact tables in data/twohop/build_queries.py with fixed English templates "
            "per family; see data/twohop/README.md."
        ),
        "families": FAMILIES,
        "items": items,
    }


if __name__ == "__main__":
    data = build()
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    from collections import Counter
    c = Counter((it["family"], it["difficulty"]) for it in data["items"])
    for fam in FAMILIES:
        print(f"{fam:26s} easy={c[(fam, 'easy')]:3d} hard={c[(fam, 'hard')]:3d}")
    print("total", len(data["items"]))
