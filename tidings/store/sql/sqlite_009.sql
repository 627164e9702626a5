-- tidings schema v9 (SQLite): a device's receipt writes its user's.
-- No semicolons inside comments: the runner splits on them (and keeps a
-- trigger's body whole).
-- The writer inserts each device's row (device_receipts), and this trigger
-- keeps the user's row (receipts, the unique-user counts) in the same step:
-- one statement a receipt instead of two, each a trip through the GIL.
-- OR IGNORE keeps the user's first time.
CREATE TRIGGER IF NOT EXISTS device_receipts_user AFTER INSERT ON device_receipts
BEGIN
  INSERT OR IGNORE INTO receipts(app_id, nid, kind, user_id, at)
  VALUES (NEW.app_id, NEW.nid, NEW.kind, NEW.user_id, NEW.at);
END;
