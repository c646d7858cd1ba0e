-- The tables every rule fixture runs on (deterministic, small).
CREATE TABLE reviews AS
SELECT i AS id,
       ['kettle', 'toaster', 'lamp', 'chair', 'desk'][1 + i % 5] AS product,
       1 + (i * 7) % 5 AS stars,
       'Review ' || i || ': the ' || ['kettle', 'toaster', 'lamp', 'chair', 'desk'][1 + i % 5] || ' '
           || ['arrived late', 'works well', 'broke after a week', 'was a gift', 'is too loud'][1 + (i * 3) % 5]
           AS text,
       'note ' || (i % 7) AS note
FROM range(1, 201) AS t(i);
CREATE TABLE products AS
SELECT * FROM (VALUES
    ('kettle', 'kitchen', 'Boils a litre of water in two minutes'),
    ('toaster', 'kitchen', 'Two slots, six browning levels'),
    ('lamp', 'living', 'Warm light, dimmable'),
    ('chair', 'office', 'Mesh back, adjustable height'),
    ('desk', 'office', 'Standing desk with a motor')
) AS p(name, category, description);
