DROP TABLE "shipments";
